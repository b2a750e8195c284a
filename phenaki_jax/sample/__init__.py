"""Inference with trained checkpoints: tokenizing, decoding, stories."""
