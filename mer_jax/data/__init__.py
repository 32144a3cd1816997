"""Data layer: raw dataset formats, media decoding, synthetic demo data, prepared records."""
