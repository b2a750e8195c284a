"""C-ViViT on real 8 fps video at 64 px, sized to train on a CPU in minutes:

    phenaki-prepare --input=clips.jsonl --output=DIR --resolution=64 --stride=1
    phenaki-train --config=configs/cvivit_real.py --config.data.name=prepared:DIR --workdir=W

The small variant's tokenizer at 2 spatial + 2 causal temporal layers (width 256, 4 heads, MLP
1024, patch 8, global attention), a codebook of 1024 with 8-dimensional codes, a 3x3
convolution over per-pixel features at the decoder's end, predictive coding in time, float32,
videos only, batch 8 for 600 steps. The recipe's choices and what each is worth:
docs/experiments/tokenizer-quality.md.
"""

import ml_collections

from phenaki_jax.config import parsing


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = parsing.variant_config("cvivit", "small")
    args = parsing.parse_arg(arg, runlocal=False)
    c.data.name = ""  # required: a real data set, e.g. prepared:DIR
    c.data.image_batch_size = 0
    c.batch_size = 8
    c.total_steps = 600
    c.warmup_steps = 60
    c.learning_rate = 1e-3
    c.end_learning_rate_factor = 0.01
    c.checkpoint_every_steps = 200
    c.log_every_steps = 50
    c.eval_every_steps = 0
    c.eval_batches = 0  # a training set holds no validation clips: judge with phenaki-eval
    c.model.spatial_layers = 2
    c.model.temporal_layers = 2
    c.model.codebook_size = 1024
    # Codes of 8 dimensions (32 by default) and a 3x3 convolution within each frame over 8
    # features per pixel: better SSIM, LPIPS and FVD on unseen clips at equal PSNR.
    c.model.code_dim = 8
    c.model.pixel_head_channels = 8
    # Predictive coding: later tokens code the change from the reconstructed frame before them
    # (+0.8 dB on unseen clips; each step 1.6x as long, tokenizing is sequential in time).
    c.model.temporal_residual = True
    c.model.dtype = "float32"
    # A short run cannot wait for dead codes: an untrained encoder maps nearly every token to
    # a few codes, and at the default usage decay (0.99) a restarted code is not judged dead
    # again for ~350 steps. Judged over ~10 steps and restarted every 20, the codebook is in
    # use by step 150 (+0.7 dB on held-out clips at 600 steps).
    c.quantizer.usage_decay = 0.9
    c.quantizer.restart_every_steps = 20
    c.loss.perceptual_weight = 0.0
    c.loss.adversarial_weight = 0.0
    c.discriminator.dtype = "float32"
    if args.runlocal:
        parsing.apply_runlocal(c)
    return c
