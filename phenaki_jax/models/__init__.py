"""Flax modules: transformer layers, C-ViViT, quantizer, discriminator, LPIPS."""
