"""Train phenaki-pytorch 0.5.0's CViViT on given clips and reconstruct held-out clips, on CPU.

Run it with the peer's own venv (``benchmarks/setup_peer.sh``), never with ours; the
comparison that calls it is ``benchmarks/real_video_peer.py``::

    /work/peer-venv/bin/python benchmarks/peer_cvivit_train.py --train_clips=train.npy \
        --eval_clips=eval.npy --output=recon.npy --steps=600 --batch=8 --resolution=64 \
        --patch=8 --width=256 --spatial_layers=2 --temporal_layers=2 --heads=4 --codebook=1024

Clips are uint8 ``[N, T, H, W, 3]``; the peer reads video in [0, 1] as ``[B, 3, T, H, W]`` (its
``VideoDataset`` applies ``ToTensor``). The training loop is the peer's ``CViViTTrainer`` with
the parts that need a download left out (its VGG perceptual loss and the GAN, which read
torchvision weights): its optimizer (``get_optimizer``, weight decay 0, so Adam), its gradient
clipping (0.5) and its EMA of the weights (beta 0.995, every step), at the given learning rate,
constant as the peer's trainer keeps it. Batches are drawn without replacement, a fresh
permutation per epoch. The reconstruction of the model or of its EMA, whichever has the lower
error on the training clips, is written (the peer's trainer evaluates both); the held-out clips
play no part in the choice.

Prints ONE JSON line: step_s (median), the losses, which weights were kept, the config.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peer_pytorch  # noqa: E402  (this folder, not a package)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train_clips", required=True)
    p.add_argument("--eval_clips", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max_grad_norm", type=float, default=0.5)
    p.add_argument("--ema_beta", type=float, default=0.995)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--frames", type=int, default=11)
    p.add_argument("--spatial_layers", type=int, default=2)
    p.add_argument("--temporal_layers", type=int, default=2)
    p.add_argument("--codebook", type=int, default=1024)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np

    torch, peer, _ = peer_pytorch.import_peer()
    from ema_pytorch import EMA
    from phenaki_pytorch.optimizer import get_optimizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = np.load(args.train_clips)
    held_out = np.load(args.eval_clips)
    for name, clips in (("--train_clips", train), ("--eval_clips", held_out)):
        if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[1:] != (
                args.frames, args.resolution, args.resolution, 3):
            raise SystemExit(f"{name}: expected uint8 [N, {args.frames}, {args.resolution}, "
                             f"{args.resolution}, 3], got {clips.dtype} {clips.shape}")

    def as_video(clips: np.ndarray):
        return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 255.0

    model = peer_pytorch.make_cvivit(args, peer)
    model.train()
    ema = EMA(model, beta=args.ema_beta, update_after_step=0, update_every=1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = get_optimizer(params, lr=args.lr, wd=0.0)
    rng = np.random.default_rng(args.seed)
    order: list[int] = []
    times, losses = [], []
    for _ in range(args.steps):
        if len(order) < args.batch:
            order += rng.permutation(len(train)).tolist()
        idx, order = order[:args.batch], order[args.batch:]
        t0 = time.perf_counter()
        loss = model(as_video(train[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        opt.step()
        ema.update()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))

    def reconstruct(net, clips: np.ndarray) -> np.ndarray:
        net.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(clips), args.batch):
                recon = net(as_video(clips[i:i + args.batch]), return_recons_only=True)
                recon = recon.clamp(0, 1).permute(0, 2, 3, 4, 1) * 255.0
                out.append(recon.round().to(torch.uint8).numpy())
        return np.concatenate(out)

    def train_mse(net) -> float:
        recon = reconstruct(net, train).astype(np.float64)
        return float(np.mean((recon - train) ** 2))

    errors = {"model": train_mse(model), "ema": train_mse(ema.ema_model)}
    kept = min(errors, key=errors.get)
    np.save(args.output, reconstruct(model if kept == "model" else ema.ema_model, held_out))
    print(json.dumps({
        "peer": peer_pytorch.PEER, "params": sum(p.numel() for p in params),
        "steps": args.steps, "batch_size": args.batch, "learning_rate": args.lr,
        "step_s": statistics.median(times), "train_s": round(sum(times), 1),
        "loss_first": round(losses[0], 5), "loss_last": round(losses[-1], 5),
        "kept_weights": kept, "train_mse_255": {k: round(v, 2) for k, v in errors.items()},
        **peer_pytorch.cvivit_config(args),
        "optimizer": f"peer get_optimizer (Adam, wd 0), lr {args.lr} constant, grad clip "
                     f"{args.max_grad_norm}, EMA {args.ema_beta}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
