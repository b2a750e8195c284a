"""C-ViViT: the causal video tokenizer of Phenaki.

Frames [B, T, H, W, 3] with T = 1 + 2k become tokens [B, 1 + k, H/p, W/p]: the first frame is
patched alone (p x p), later frames in 2 x p x p tubelets. Spatial attention runs within each
token frame, then causal temporal attention runs along time at each spatial position, so token
frame j depends on frames [0, 1 + 2j) only: an image is a one-frame video, and the tokens of a
prefix equal the prefix of the tokens. Nothing else looks ahead: position embeddings are
absolute and per-frame, layer norms act per token, there are no temporal convolutions.
The decoder mirrors the encoder (causal temporal, then spatial) and is causal too.
`encoder_window` = r >= 0 narrows every encoder layer to the patches at most r rows and
columns away (spatial) and the r previous token frames (temporal); r = 0 makes each code a
function of its own tubelet only (the tiny variant), -1 is the paper's global attention.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from phenaki_jax.models import layers, quantizers

Array = jax.Array


def token_grid(num_frames: int, resolution: int, patch: int, temporal_patch: int = 2
               ) -> tuple[int, int, int]:
    """[t, h, w] tokens of one clip."""
    return (1 + (num_frames - 1) // temporal_patch, resolution // patch, resolution // patch)


def window_mask(h: int, w: int, radius: int) -> Array:
    """[1, h*w, h*w]: patch i attends to patch j when they are at most `radius` apart (in rows
    and in columns)."""
    ys, xs = jnp.divmod(jnp.arange(h * w), w)
    near = (jnp.abs(ys[:, None] - ys[None]) <= radius) & (jnp.abs(xs[:, None] - xs[None]) <= radius)
    return near[None]


def frames_to_float(frames: Array) -> Array:
    """uint8 [..., 3] in [0, 255] -> float32 in [-1, 1]."""
    return frames.astype(jnp.float32) / 127.5 - 1.0


def float_to_frames(x: Array) -> Array:
    """float in [-1, 1] -> uint8, rounded and clipped."""
    return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


class CViViT(nn.Module):
    width: int
    spatial_layers: int
    temporal_layers: int
    num_heads: int
    mlp_dim: int
    patch_size: int
    temporal_patch_size: int
    codebook_size: int
    code_dim: int
    max_token_frames: int
    resolution: int
    commitment_weight: float = 0.25
    usage_decay: float = 0.99
    encoder_window: int = -1
    pixel_head_channels: int = 0
    temporal_residual: bool = False
    remat: str | bool = "none"
    dtype: Any = jnp.float32

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> CViViT:
        m = config.model
        t, _, _ = token_grid(config.data.num_frames, config.data.resolution, m.patch_size,
                             m.temporal_patch_size)
        return cls(width=m.width, spatial_layers=m.spatial_layers,
                   temporal_layers=m.temporal_layers, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
                   patch_size=m.patch_size, temporal_patch_size=m.temporal_patch_size,
                   codebook_size=m.codebook_size, code_dim=m.code_dim, max_token_frames=t,
                   resolution=config.data.resolution,
                   commitment_weight=config.quantizer.commitment_weight,
                   usage_decay=config.quantizer.usage_decay,
                   encoder_window=m.get("encoder_window", -1),
                   pixel_head_channels=m.get("pixel_head_channels", 0),
                   temporal_residual=bool(m.get("temporal_residual", False)), remat=m.remat,
                   dtype=layers.dtype_of(m.dtype))

    def setup(self) -> None:
        p, pt, d = self.patch_size, self.temporal_patch_size, self.width
        hw = (self.resolution // p) ** 2
        emb = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("length", "embed"))

        # Token frames are kept as [B, t, h*w, D] throughout; spatial stacks attend along axis
        # 2, temporal stacks (causally) along axis 1, with no transposes of the stream.
        def stack(n: int, name: str, axis: int, self_only: bool = False) -> layers.Transformer:
            return layers.Transformer(n, self.num_heads, self.mlp_dim, remat=self.remat,
                                      axis=axis, dtype=self.dtype, self_only=self_only,
                                      name=name)

        # Window 0: each token attends to itself alone, computed without logits or a mask.
        local = self.encoder_window == 0

        self.embed_first = layers.dense(d, ("channels", "embed"), self.dtype, "embed_first")
        self.embed_rest = layers.dense(d, ("channels", "embed"), self.dtype, "embed_rest")
        self.enc_space_pos = self.param("enc_space_pos", emb, (hw, d), jnp.float32)
        self.enc_time_pos = self.param("enc_time_pos", emb, (self.max_token_frames, d),
                                       jnp.float32)
        self.enc_spatial = stack(self.spatial_layers, "enc_spatial", 2, local)
        self.enc_temporal = stack(self.temporal_layers, "enc_temporal", 1, local)
        self.enc_norm = layers.LayerNorm(self.dtype, name="enc_norm")
        self.to_code = layers.dense(self.code_dim, ("embed", "code"), jnp.float32, "to_code")
        self.quantizer = quantizers.FactorizedVQ(self.codebook_size, self.code_dim,
                                                 self.commitment_weight, self.usage_decay,
                                                 name="quantizer")
        self.from_code = layers.dense(d, ("code", "embed"), self.dtype, "from_code")
        self.dec_space_pos = self.param("dec_space_pos", emb, (hw, d), jnp.float32)
        self.dec_time_pos = self.param("dec_time_pos", emb, (self.max_token_frames, d),
                                       jnp.float32)
        self.dec_temporal = stack(self.temporal_layers, "dec_temporal", 1)
        self.dec_spatial = stack(self.spatial_layers, "dec_spatial", 2)
        self.dec_norm = layers.LayerNorm(self.dtype, name="dec_norm")
        # A one-hidden-layer head per token: a linear map from `width` to p*p*pt*3 pixels would
        # confine every reconstructed tubelet to a width-dimensional subspace (rank 128 for
        # 384 pixel values in the tiny variant), which capped PSNR in our experiments.
        self.head_hidden = layers.dense(self.mlp_dim, ("embed", "mlp"), jnp.float32,
                                        "head_hidden")
        # `pixel_head_channels` = c > 0: each token gives c features per pixel instead of its
        # colour, and a 3x3 convolution within each frame maps them to colours, so a pixel on
        # a patch's edge also sees its neighbours across the edge (no temporal reach: the
        # decoder stays causal).
        c = self.pixel_head_channels or 3
        self.to_first = layers.dense(p * p * c, ("mlp", "channels"), jnp.float32, "to_first")
        self.to_rest = layers.dense(pt * p * p * c, ("mlp", "channels"), jnp.float32,
                                    "to_rest")
        if self.pixel_head_channels:
            self.to_pixels = nn.Conv(
                3, (3, 3), padding="SAME", dtype=jnp.float32, name="to_pixels",
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                         (None, None, None, None)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))

    # -- patching -------------------------------------------------------------------------
    def _patchify(self, x: Array) -> tuple[Array, Array | None]:
        """[B, T, H, W, 3] -> first [B, 1, h, w, p*p*3], rest [B, t-1, h, w, pt*p*p*3]."""
        b, t, hh, ww, c = x.shape
        p, pt = self.patch_size, self.temporal_patch_size
        h, w = hh // p, ww // p
        first = x[:, :1].reshape(b, 1, h, p, w, p, c).transpose(0, 1, 2, 4, 3, 5, 6)
        first = first.reshape(b, 1, h, w, p * p * c)
        if t == 1:
            return first, None
        k = (t - 1) // pt
        rest = x[:, 1:].reshape(b, k, pt, h, p, w, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        return first, rest.reshape(b, k, h, w, pt * p * p * c)

    def _unpatchify(self, first: Array, rest: Array | None) -> Array:
        """first [B, 1, h, w, p*p*c], rest [B, k, h, w, pt*p*p*c] -> [B, 1 + pt*k, H, W, c]."""
        p, pt = self.patch_size, self.temporal_patch_size
        b, _, h, w, n = first.shape
        c = n // (p * p)
        out = first.reshape(b, 1, h, w, p, p, c).transpose(0, 1, 2, 4, 3, 5, 6)
        out = out.reshape(b, 1, h * p, w * p, c)
        if rest is None:
            return out
        k = rest.shape[1]
        r = rest.reshape(b, k, h, w, pt, p, p, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        r = r.reshape(b, k * pt, h * p, w * p, c)
        return jnp.concatenate([out, r], axis=1)

    # -- factorized attention ---------------------------------------------------------------
    def _spatial(self, x: Array, stack: layers.Transformer, window: int = -1) -> Array:
        b, t, h, w, d = x.shape
        mask = None if window < 0 or stack.self_only else window_mask(h, w, window)
        return stack(x.reshape(b, t, h * w, d), mask=mask).reshape(b, t, h, w, d)

    def _temporal(self, x: Array, stack: layers.Transformer, window: int = -1) -> Array:
        b, t, h, w, d = x.shape
        mask = None if stack.self_only else layers.causal_mask(t, window)[0]
        y = stack(x.reshape(b, t, h * w, d), mask=mask)
        return y.reshape(b, t, h, w, d)

    def _check_frames(self, t: int) -> int:
        if (t - 1) % self.temporal_patch_size:
            raise ValueError(f"C-ViViT needs 1 + {self.temporal_patch_size}k frames, got {t}")
        token_frames = 1 + (t - 1) // self.temporal_patch_size
        if token_frames > self.max_token_frames:
            raise ValueError(f"C-ViViT was built for at most {self.max_token_frames} token "
                             f"frames, got {token_frames}")
        return token_frames

    # -- public API -----------------------------------------------------------------------
    def latents(self, video: Array, bases: Array | None = None) -> Array:
        """video float [B, T, H, W, 3] in [-1, 1] -> the encoder's output before quantization,
        [B, t, h, w, code_dim] (not normalised).

        With `temporal_residual` a later tubelet is embedded with its difference from `bases`
        [B, t - 1, H, W, 3], the reconstructed last frame before each token frame (computed
        here when not given), so the encoder sees what the decoder has yet to add.
        """
        t_tok = self._check_frames(video.shape[1])
        first, rest = self._patchify(video.astype(self.dtype))
        x = self.embed_first(first)
        if rest is not None:
            if self.temporal_residual:
                if bases is None:
                    bases = self._reconstructed_bases(video)
                pred = jnp.concatenate(
                    [video[:, :1], jnp.repeat(bases, self.temporal_patch_size, axis=1)], 1)
                _, change = self._patchify((video - pred).astype(self.dtype))
                rest = jnp.concatenate([rest, change], axis=-1)
            x = jnp.concatenate([x, self.embed_rest(rest)], axis=1)
        b, _, h, w, d = x.shape
        x = x + self.enc_space_pos.reshape(1, 1, h, w, d).astype(self.dtype)
        x = x + self.enc_time_pos[:t_tok].reshape(1, t_tok, 1, 1, d).astype(self.dtype)
        x = self._spatial(x, self.enc_spatial, self.encoder_window)
        x = self._temporal(x, self.enc_temporal, self.encoder_window)
        return self.to_code(self.enc_norm(x).astype(jnp.float32))

    def _reconstructed_bases(self, video: Array) -> Array:
        """[B, t - 1, H, W, 3]: the last frame of each token frame but the last, as the decoder
        reconstructs it from the codes chosen for it. Token frame j's codes depend on the bases
        before it, so they are found in order, each from the prefix of frames it may see (the
        encoder and decoder are causal: a prefix codes and decodes as within the whole clip).
        The bases are inputs, not a path for gradients: the codes are discrete."""
        t_tok = self._check_frames(video.shape[1])
        bases: list[Array] = []
        for j in range(1, t_tok):
            prefix = video[:, :1 + self.temporal_patch_size * (j - 1)]
            z = self.latents(prefix, jnp.stack(bases, axis=1) if bases else None)
            recon = self.decode_codes(self.quantizer(z)["quantized"])
            bases.append(jax.lax.stop_gradient(recon[:, -1].astype(video.dtype)))
        return jnp.stack(bases, axis=1)

    def encode(self, video: Array, update_stats: bool = False,
               token_mask: Array | None = None) -> dict[str, Array]:
        """video float [B, T, H, W, 3] in [-1, 1] -> quantizer outputs; `ids` [B, t, h, w].

        `token_mask` [B, t] (1 for a real token frame, 0 for padding) is the quantizer's mask:
        an image padded to T frames has real tokens only in token frame 0.
        """
        mask = None if token_mask is None else token_mask[:, :, None, None]
        return self.quantizer(self.latents(video), update_stats=update_stats, mask=mask)

    def decode_codes(self, codes: Array) -> Array:
        """Unit code vectors [B, t, h, w, code_dim] -> float frames [B, 1 + 2(t-1), H, W, 3]."""
        b, t, h, w, _ = codes.shape
        x = self.from_code(codes.astype(self.dtype))
        d = x.shape[-1]
        x = x + self.dec_space_pos.reshape(1, 1, h, w, d).astype(self.dtype)
        x = x + self.dec_time_pos[:t].reshape(1, t, 1, 1, d).astype(self.dtype)
        x = self._temporal(x, self.dec_temporal)
        x = self._spatial(x, self.dec_spatial)
        x = nn.gelu(self.head_hidden(self.dec_norm(x).astype(jnp.float32)))
        first = self.to_first(x[:, :1])
        rest = self.to_rest(x[:, 1:]) if t > 1 else None
        if not self.pixel_head_channels:
            y = self._unpatchify(first, rest)
        else:
            feats = nn.gelu(self._unpatchify(first, rest))
            b, frames, hh, ww, c = feats.shape
            y = self.to_pixels(feats.reshape(b * frames, hh, ww, c)).reshape(
                b, frames, hh, ww, 3)
        return self._add_previous(y) if self.temporal_residual else y

    def _add_previous(self, y: Array) -> Array:
        """Predictive decoding: the frames of token frame j >= 1 are the head's output plus the
        reconstructed last frame of token frame j - 1, so later tokens code what changed, not
        the whole picture again. Frame 0 and images are the head's output as it is; frame i of
        token frame j still depends on token frames <= j only."""
        pt = self.temporal_patch_size
        b, frames, hh, ww, c = y.shape
        if frames == 1:
            return y
        first = y[:, :1]
        rest = y[:, 1:].reshape(b, (frames - 1) // pt, pt, hh, ww, c)
        # The reconstructed last frame of token frame j is frame 0 plus the head's last frames
        # of token frames 1..j, so each token frame's base is an exclusive cumulative sum.
        lasts = jnp.cumsum(rest[:, :, -1], axis=1)
        base = first + jnp.concatenate([jnp.zeros_like(lasts[:, :1]), lasts[:, :-1]], axis=1)
        return jnp.concatenate([first, (rest + base[:, :, None]).reshape(y[:, 1:].shape)], 1)

    def decode_ids(self, ids: Array) -> Array:
        """Token ids int32 [B, t, h, w] -> float frames [B, 1 + 2(t-1), H, W, 3]."""
        return self.decode_codes(self.quantizer.lookup(ids))

    def tokenize(self, video: Array) -> Array:
        """float [B, T, H, W, 3] -> int32 ids [B, t, h, w]."""
        return self.encode(video)["ids"]

    def __call__(self, video: Array, update_stats: bool = False,
                 token_mask: Array | None = None, images: Array | None = None
                 ) -> dict[str, Array]:
        """Encode, quantize, decode. Returns `recon` (float, like `video`) and VQ outputs.

        `images` float [Bi, 1, H, W, 3], if given, are one-frame clips coded with the videos:
        their tokens and the videos' real tokens go through the quantizer as one set (one
        loss, one usage update, one pool of restart candidates), and `image_recon` and
        `image_ids` [Bi, 1, h, w] are added to the outputs. An image costs one token frame
        here, where padded to T frames it costs 1 + (T - 1) / pt. `z` and `errors` are then
        flat over all tokens, videos' first.
        """
        if images is None:
            out = self.encode(video, update_stats=update_stats, token_mask=token_mask)
            out["recon"] = self.decode_codes(out["quantized"])
            return out
        if images.shape[1] != 1:
            raise ValueError(f"images must be one-frame clips [B, 1, H, W, 3], got {images.shape}")
        zv, zi = self.latents(video), self.latents(images)
        d = zv.shape[-1]
        mv = (jnp.ones(zv.shape[:2], jnp.float32) if token_mask is None
              else token_mask.astype(jnp.float32))
        mv = jnp.broadcast_to(mv[:, :, None, None], zv.shape[:-1])
        out = self.quantizer(
            jnp.concatenate([zv.reshape(-1, d), zi.reshape(-1, d)]), update_stats=update_stats,
            mask=jnp.concatenate([mv.reshape(-1), jnp.ones(zi.shape[:-1]).reshape(-1)]))
        n = mv.size
        quantized, ids = out["quantized"], out["ids"]
        out["quantized"] = quantized[:n].reshape(zv.shape)
        out["ids"] = ids[:n].reshape(zv.shape[:-1])
        out["image_ids"] = ids[n:].reshape(zi.shape[:-1])
        out["recon"] = self.decode_codes(out["quantized"])
        out["image_recon"] = self.decode_codes(quantized[n:].reshape(zi.shape))
        return out
