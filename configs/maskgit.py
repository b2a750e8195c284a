"""Masked video transformer (stage 2): `--config=configs/maskgit.py:variant=tiny`.

Trains a bidirectional MaskGIT transformer over the token grid of a frozen C-ViViT tokenizer
(`--config.tokenizer_workdir=DIR`), conditioned on text by cross-attention, jointly on images
and videos. Variants: tiny (CPU, minutes, the shapes world at 32 px with a small text encoder
trained from scratch), small, base, paper (24 layers, width 2048, 32 heads, MLP 8192, frozen
T5 v1.1 XXL embeddings of width 4096: about 1.8B parameters over 6x16x16 tokens).
Arguments: `variant=...`, `runlocal` (a few steps at batch 2, to check a large variant).
"""

import ml_collections

from phenaki_jax.config import parsing

# width, layers, heads, mlp, resolution, batch, steps, lr, text encoder. The token grid and
# vocabulary are the tokenizer's (configs/cvivit.py at the same variant when benchmarking).
# tiny: a byte-level text encoder trained with the transformer (no pretrained T5 offline);
# width 128 for steps, which prompt adherence needs (docs/experiments/prompt-adherence.md).
_SIZES = {
    "tiny": dict(width=128, num_layers=4, num_heads=4, mlp_dim=512, resolution=32,
                 batch_size=16, total_steps=10_000, learning_rate=1e-3, encoder="trainable",
                 text_length=32, text_dim=128),
    "small": dict(width=512, num_layers=8, num_heads=8, mlp_dim=2048, resolution=64,
                  batch_size=64, total_steps=100_000, learning_rate=3e-4, encoder="t5",
                  text_length=64, text_dim=768),
    "base": dict(width=1024, num_layers=16, num_heads=16, mlp_dim=4096, resolution=128,
                 batch_size=256, total_steps=300_000, learning_rate=2e-4, encoder="t5",
                 text_length=64, text_dim=1024),
    "paper": dict(width=2048, num_layers=24, num_heads=32, mlp_dim=8192, resolution=128,
                  batch_size=512, total_steps=1_000_000, learning_rate=1e-4, encoder="t5",
                  text_length=64, text_dim=4096),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parsing.parse_arg(arg, variant="tiny", runlocal=False)
    size = _SIZES.get(args.variant)
    c = parsing.common_config("maskgit", args.variant)
    if size is None:  # common_config has already rejected it
        return c
    tiny = args.variant == "tiny"
    c.batch_size = size["batch_size"]
    c.total_steps = size["total_steps"]
    c.learning_rate = size["learning_rate"]
    c.warmup_steps = min(5000, size["total_steps"] // 20)
    c.weight_decay = 0.01
    c.adam_b2 = 0.99
    c.eval_every_steps = 0 if tiny else 5000
    c.checkpoint_every_steps = min(5000, max(100, size["total_steps"] // 5))
    c.log_every_steps = 100
    c.eval_batches = 8
    c.label_smoothing = 0.1  # MaskGIT's target smoothing; helps held-out compositions
    c.ema_decay = 0.0  # sampling from an EMA of the weights hurt adherence on tiny
    c.tokenizer_workdir = ""  # the trained C-ViViT whose token ids this model learns

    c.data.resolution = size["resolution"]
    c.data.name = f"shapes_world_{size['resolution']}"  # re-weighted by the two fractions
    c.data.image_fraction = 0.2  # share of images (the paper: 80% video)
    c.data.continuation_fraction = 0.25  # share of the videos that are continuation clips

    c.model = ml_collections.ConfigDict()
    for k in ("width", "num_layers", "num_heads", "mlp_dim"):
        c.model[k] = size[k]
    c.model.dtype = "float32" if tiny else "bfloat16"
    c.model.remat = "full" if args.variant in ("base", "paper") else "none"
    # xla (any device), cudnn (GPU), splash (TPU; lengths that are multiples of 128). The
    # paper variant's choices are those phenaki-plan shows fitting (docs/experiments/pods.md).
    c.model.attention = "splash" if args.variant == "paper" else "xla"
    # One scanned block instead of num_layers unrolled ones (another parameter layout): a
    # fraction of the memory and compile time of 24 unrolled blocks.
    c.model.scan_layers = args.variant == "paper"

    c.tokens = ml_collections.ConfigDict()
    c.tokens.grid = (0, 0, 0)  # [t, h, w]; 0s: the tokenizer's
    c.tokens.vocab_size = 0  # 0: the tokenizer's codebook size

    c.text = ml_collections.ConfigDict()
    c.text.encoder = size["encoder"]  # "trainable" (from scratch, bytes) or "t5" (frozen)
    c.text.max_length = size["text_length"]  # tokens per caption, EOS included
    c.text.embed_dim = size["text_dim"]  # the encoder's width
    c.text.dropout = 0.1  # text dropped this often, for classifier-free guidance
    c.text.checkpoint = ""  # t5: a Hugging Face or T5X checkpoint directory
    c.text.vocabulary = ""  # t5: the sentencepiece model (needed for T5X)
    c.text.cache = ""  # t5: a phenaki-embed .npz that training looks captions up in
    c.text.frozen_dtype = "bfloat16"  # t5: the frozen weights' dtype (not checkpointed)
    c.text.num_layers = 2  # trainable: T5 v1.1 layers
    c.text.num_heads = 4  # trainable: attention heads
    c.text.mlp_dim = 4 * size["text_dim"]  # trainable: MLP width

    c.masking = ml_collections.ConfigDict()
    # Videos that keep their first j token frames given, as the story decoder gives them.
    c.masking.prefix_fraction = 0.3
    # Of the other videos, those that mask one whole token frame (refine_sweeps' question).
    c.masking.frame_fraction = 0.0
    # A continuation's context frames (which its caption does not tell) are always given.
    c.masking.give_context = True
    # Weight of an image's masked tokens in the loss, against 1 for a video's. An image has
    # one token frame of a video's t, so at 1 its tokens are a small share of each batch's
    # loss; t makes an image weigh as much as a video.
    c.masking.image_weight = 1.0

    # Decoding defaults, chosen on tiny with phenaki-eval (docs/experiments/prompt-adherence.md).
    c.sampling = ml_collections.ConfigDict()
    c.sampling.num_steps = 24 if tiny else 12  # parallel decoding steps
    c.sampling.guidance_scale = 1.0 if tiny else 4.0  # classifier-free guidance
    c.sampling.temperature = 0.5 if tiny else 1.0  # token sampling temperature
    c.sampling.choice_temperature = 4.5  # noise on the confidences that choose kept tokens
    c.sampling.time_bias = 0.0  # confidence handicap per token frame (earlier frames first)
    c.sampling.refine_sweeps = 1 if tiny else 0  # passes re-predicting each token frame
    c.sampling.candidates = 1  # samples per clip, the most likely kept (decoding.best_of)
    # The guidance scale the candidates are ranked at: 2 on tiny keeps the held-out
    # compositions that the conditional model's ranking loses.
    c.sampling.candidate_guidance = 2.0 if tiny else c.sampling.guidance_scale

    if args.runlocal:
        parsing.apply_runlocal(c)
    return c
