"""mer_jax: multimodal emotion-recognition LLMs in JAX/Flax."""
