"""The masked video transformer of Phenaki (MaskGIT-style, bidirectional).

Token ids [B, t, h, w] (the id `vocab_size` is the mask token) are embedded, given factorized
(t, h, w) position embeddings, and run through blocks of full self-attention over all video
tokens, cross-attention to the text embeddings and an MLP; a final norm and a linear map give
logits over the codebook [B, t, h, w, vocab_size].

Text enters through cross-attention directly from the encoder's width (4096 for T5 XXL in the
paper variant, which is what puts it at about 1.8B parameters). When the text is dropped (for
classifier-free guidance), the context becomes one learned null embedding, so the
unconditional model is a real, trained model rather than attention over padding.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from phenaki_jax.models import layers

Array = jax.Array


class MaskGIT(nn.Module):
    vocab_size: int
    grid: tuple[int, int, int]
    width: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    text_dim: int
    remat: str | bool = "none"
    dtype: Any = jnp.float32
    attention: str = "xla"
    scan_layers: bool = False

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> MaskGIT:
        m = config.model
        return cls(vocab_size=config.tokens.vocab_size, grid=tuple(config.tokens.grid),
                   width=m.width, num_layers=m.num_layers, num_heads=m.num_heads,
                   mlp_dim=m.mlp_dim, text_dim=config.text.embed_dim, remat=m.remat,
                   dtype=layers.dtype_of(m.dtype), attention=m.get("attention", "xla"),
                   scan_layers=bool(m.get("scan_layers", False)))

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @nn.compact
    def __call__(self, ids: Array, context: Array, context_mask: Array,
                 drop_text: Array | None = None, valid: Array | None = None) -> Array:
        """Logits for every token.

        Args:
          ids: int32 [B, t, h, w], `mask_id` where a token is masked.
          context: text embeddings [B, L, text_dim].
          context_mask: [B, L], 1 for real text tokens.
          drop_text: bool [B]; True replaces the text by the learned null embedding.
          valid: bool [B, t*h*w]; tokens that exist (False: the padding frames of an image).
            Nothing attends to an invalid token.

        Returns:
          float32 logits [B, t, h, w, vocab_size].
        """
        b, t, h, w = ids.shape
        d = self.width
        emb = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed"))
        # vocab_size codes and the mask token, padded to a multiple of 128 rows so that the
        # table splits evenly over any model axis (and tiles well on TPUs).
        rows = -(-(self.vocab_size + 1) // 128) * 128
        table = self.param("token_embedding", emb, (rows, d), jnp.float32)
        x = jnp.take(table, ids.reshape(b, t * h * w), axis=0).astype(self.dtype)
        pos = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("length", "embed"))
        pt = self.param("time_pos", pos, (self.grid[0], d), jnp.float32)
        ph = self.param("height_pos", pos, (self.grid[1], d), jnp.float32)
        pw = self.param("width_pos", pos, (self.grid[2], d), jnp.float32)
        position = (pt[:t, None, None] + ph[None, :h, None] + pw[None, None, :w])
        x = x + position.reshape(1, t * h * w, d).astype(self.dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "activation_embed"))

        context = context.astype(self.dtype)
        context_mask = context_mask.astype(bool)
        if drop_text is not None:
            null = self.param("null_text", nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("text_embed",)), (self.text_dim,), jnp.float32)
            drop = drop_text.reshape(b, 1)
            first = (jnp.arange(context.shape[1]) == 0)[None, :]
            context = jnp.where(drop[..., None], null.astype(self.dtype)[None, None], context)
            context_mask = jnp.where(drop, first, context_mask)
        self_mask = None if valid is None else valid.astype(bool)[:, None, None, :]
        x = layers.Transformer(self.num_layers, self.num_heads, self.mlp_dim,
                               cross_attention=True, remat=self.remat, dtype=self.dtype,
                               attention=self.attention, scan=self.scan_layers,
                               name="transformer")(x, mask=self_mask, context=context,
                                                   context_mask=context_mask[:, None, None, :])
        x = layers.LayerNorm(self.dtype, name="final_norm")(x)
        logits = layers.dense(self.vocab_size, ("embed", "vocab"), jnp.float32, "to_logits")(
            x.astype(jnp.float32))
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.reshape(b, t, h, w, self.vocab_size)
