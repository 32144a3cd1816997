"""Evaluation: metrics, decoding and reports."""
