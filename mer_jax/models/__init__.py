"""Model layer: encoders, fusion, decoder LLM and the full multimodal emotion model."""
