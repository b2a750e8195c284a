"""phenaki_jax: Phenaki (C-ViViT video tokenizer, masked video transformer) in JAX/Flax."""

__version__ = "0.1.0"
