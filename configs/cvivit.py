"""C-ViViT tokenizer (stage 1): `--config=configs/cvivit.py:variant=tiny`.

Variants: tiny (CPU, minutes, 32 px), small (64 px), base (128 px), paper (the paper's sizes:
4 spatial + 4 causal temporal layers, width 512, 8 heads, MLP 2048, codebook 8192 of dim 32,
11x128x128 frames -> 6x16x16 tokens). Arguments: `variant=...`, `runlocal` (shrink steps and
batch for a quick check of a large variant on a workstation).
"""

import ml_collections

from phenaki_jax.config import parsing

# width, spatial, temporal, heads, mlp, patch, codebook, resolution, batch, steps, lr.
# tiny: 8x8 patches keep a clip at 6x4x4 = 96 tokens, so both stages train in minutes on a CPU
# (its recipe's measurements: docs/experiments/tokenizer-quality.md).
_SIZES = {
    "tiny": dict(width=128, spatial_layers=2, temporal_layers=2, num_heads=4, mlp_dim=512,
                 patch_size=8, codebook_size=1024, resolution=32, batch_size=8,
                 total_steps=30_000, learning_rate=2e-3, image_batch_size=16),
    "small": dict(width=256, spatial_layers=4, temporal_layers=4, num_heads=4, mlp_dim=1024,
                  patch_size=8, codebook_size=4096, resolution=64, batch_size=32,
                  total_steps=50_000, learning_rate=5e-4),
    "base": dict(width=384, spatial_layers=4, temporal_layers=4, num_heads=6, mlp_dim=1536,
                 patch_size=8, codebook_size=8192, resolution=128, batch_size=64,
                 total_steps=200_000, learning_rate=3e-4),
    "paper": dict(width=512, spatial_layers=4, temporal_layers=4, num_heads=8, mlp_dim=2048,
                  patch_size=8, codebook_size=8192, resolution=128, batch_size=128,
                  total_steps=1_000_000, learning_rate=1e-4),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parsing.parse_arg(arg, variant="tiny", runlocal=False)
    size = _SIZES.get(args.variant)
    c = parsing.common_config("cvivit", args.variant)
    if size is None:  # common_config has already rejected it; keeps type checkers calm
        return c
    c.batch_size = size["batch_size"]
    c.total_steps = size["total_steps"]
    c.learning_rate = size["learning_rate"]
    c.warmup_steps = min(1000, size["total_steps"] // 10)
    c.eval_every_steps = 1000 if args.variant == "tiny" else 5000
    c.checkpoint_every_steps = min(5000, max(100, size["total_steps"] // 5))
    c.log_every_steps = 100
    c.data.resolution = size["resolution"]
    c.data.name = f"shapes_world_videos_mix_{size['resolution']}"  # videos in the batch
    # Images per step beside the batch, each coded as a one-frame clip (0: none).
    c.data.image_batch_size = size.get("image_batch_size", 0)
    c.data.image_name = f"shapes_world_images_{size['resolution']}"  # the image stream's task
    # Random symmetries and shifts of each training clip: a comma-separated subset of flip,
    # dihedral, reverse, channels, shift, zoom ('': none; see phenaki_jax/stages/augment.py).
    c.data.augment = ""

    c.model = ml_collections.ConfigDict()
    for k in ("width", "spatial_layers", "temporal_layers", "num_heads", "mlp_dim",
              "patch_size", "codebook_size"):
        c.model[k] = size[k]
    c.model.temporal_patch_size = 2
    # Encoder attention radius in patches and token frames (-1: global, as the paper; tiny's 0
    # codes each tubelet from its own pixels, which its transformer predicts far better).
    c.model.encoder_window = 0 if args.variant == "tiny" else -1
    c.model.code_dim = 32
    # Features per pixel that a 3x3 convolution within each frame maps to colours (0: each
    # token's head gives its pixels' colours directly).
    c.model.pixel_head_channels = 0
    # Predictive coding: a later token frame decodes onto the reconstructed last frame before
    # it, and its encoder sees its difference from that frame, so its tokens code what changed
    # (False: every token frame codes its pixels whole). Tokenizing then runs the encoder and
    # decoder once per token frame on the prefix before it.
    c.model.temporal_residual = False
    c.model.dtype = "float32" if args.variant == "tiny" else "bfloat16"
    c.model.remat = "full" if args.variant in ("base", "paper") else "none"

    c.quantizer = ml_collections.ConfigDict()
    c.quantizer.commitment_weight = 0.25
    c.quantizer.usage_decay = 0.99  # EMA of per-code usage, for dead-code restart
    # A code is dead when its usage EMA is below this fraction of the uniform share 1/K.
    c.quantizer.dead_threshold = 0.03
    c.quantizer.restart_every_steps = 100  # 0 disables dead-code restart
    # Restarts stop after this fraction of total_steps (1.0: never).
    c.quantizer.restart_stop_fraction = 0.8 if args.variant == "tiny" else 1.0
    c.ema_decay = 0.999 if args.variant == "tiny" else 0.0  # inference uses the EMA weights

    c.loss = ml_collections.ConfigDict()
    c.loss.l2_weight = 1.0
    c.loss.vq_weight = 1.0
    # The paper's LPIPS and adversarial losses; off in tiny, where they cost more than the model.
    c.loss.perceptual_weight = 0.0 if args.variant == "tiny" else 0.1
    c.loss.adversarial_weight = 0.0 if args.variant == "tiny" else 0.1
    # The paper's video perceptual loss (I3D logits of real against reconstructed clips at
    # 224 x 224, >= 9 frames). Off by default: at the paper's batch its memory on a pod is
    # not yet planned (phenaki-plan --config.loss.video_perceptual_weight=0.1 ...).
    c.loss.video_perceptual_weight = 0.0
    c.loss.lecam_weight = 0.001
    c.loss.adversarial_start_step = 0 if args.variant == "tiny" else 20_000

    c.discriminator = ml_collections.ConfigDict()
    c.discriminator.channels = 64 if args.variant in ("tiny", "small") else 128
    c.discriminator.max_channels = 512
    c.discriminator.learning_rate = c.learning_rate
    c.discriminator.dtype = c.model.dtype
    # No remat: the plan shows it saves nothing here (docs/experiments/pods.md).
    c.discriminator.remat = "none"

    if args.runlocal:
        parsing.apply_runlocal(c)
    return c
