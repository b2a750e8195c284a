"""phenaki-bench: parameters, token grid and the speed of one training step, as one JSON line.

`phenaki-bench --config=configs/cvivit.py:variant=V [--config.KEY=V] [--steps=N] [--abstract]
[--sample]`. The step timed is exactly the trainer's jitted step (forward, backward, optimizer,
and the discriminator update when enabled) on the configured mesh. `--abstract` only traces
shapes (`jax.eval_shape`), so the paper variants answer on a laptop. MFU is measured against
the float32 matmul throughput of this very process, not a datasheet.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags
from ml_collections import config_flags

from phenaki_jax.cli.common import UsageError
from phenaki_jax.cli.common import run as run_command

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to benchmark.",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after compilation (median reported).")
_ABSTRACT = flags.DEFINE_bool("abstract", False, "Shapes only; allocate nothing.")
_SAMPLE = flags.DEFINE_bool("sample", False, "Also time sampling (transformer only).")


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul FLOP/s of this process's default device."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / min(times)


# The instruction sets that decide XLA's CPU kernels (and so a step's speed on an x86 machine).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_tile",
             "amx_bf16")
# The float32 matmul rate that the demo's time budget is stated at (see `machine_report`).
REFERENCE_MATMUL_FLOPS = 200e9


def machine_report(matmul_flops: float | None = None) -> dict[str, Any]:
    """What the numbers of this process were measured on: CPU model, cores, the instruction
    sets XLA uses, and this process's measured float32 matmul rate (the reference workload:
    a time measured here scales to another machine by the ratio of these rates)."""
    model, flags_ = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags_ = set(value.split())
                    break
    except OSError:  # not Linux: the model from `platform` and no flags
        pass
    rate = matmul_peak_flops() if matmul_flops is None else matmul_flops
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)),
            "isa": [f for f in ISA_FLAGS if f in flags_],
            "matmul_float32_gflops": round(rate / 1e9, 1)}


def count_params(tree: Any) -> int:
    import jax

    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def sample_seconds(stage: Any, state: Any, mesh: Any, repeats: int  # noqa: ANN401
                   ) -> dict[str, float]:
    """Median seconds for a transformer to sample one batch of clips (every decoding step of
    its config's `sampling`), after compiling."""
    import jax
    import jax.numpy as jnp

    from phenaki_jax import sharding
    from phenaki_jax.decoding import SamplingSettings

    c = stage.config
    batch = sharding.global_batch(mesh, stage.bench_batch(np.random.default_rng(1)))
    settings = SamplingSettings.from_config(c.sampling)
    b, grid = c.batch_size, stage.grid
    known = jnp.zeros((b, *grid), bool)

    @jax.jit
    def run(st: Any, bt: Any, key: jax.Array) -> jax.Array:  # noqa: ANN401
        return stage.sample_ids(st, bt, jnp.zeros((b, *grid), jnp.int32), known, key, settings)

    t0 = time.perf_counter()
    compiled = run.lower(state, batch, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(state, batch, jax.random.key(0)))
    times = []
    for i in range(max(repeats, 1)):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, batch, jax.random.key(i + 1)))
        times.append(time.perf_counter() - t0)
    return {"sample_s": statistics.median(times), "sample_compile_s": compile_s,
            "sample_steps": settings.num_steps}


def benchmark(config: Any, steps: int = 5, abstract: bool = False,
              sample: bool = False) -> dict[str, Any]:
    import flax.linen as nn
    import jax

    from phenaki_jax import sharding
    from phenaki_jax.stages import registry
    from phenaki_jax.stages.state import create_state
    from phenaki_jax.train.loop import jit_train_step
    from phenaki_jax.train.plan import DEVICE_KINDS, GENERATIONS, model_flops

    config, stage = registry.for_benchmark(config, None if abstract else jax.device_count())
    if sample and config.stage != "maskgit":
        raise UsageError(f"--sample times the sampler of a transformer config; this config "
                             f"trains the {config.stage!r} stage")
    out: dict[str, Any] = {"variant": config.variant, "stage": config.stage}
    boxed = jax.eval_shape(stage.init, jax.random.key(0))
    out["params"] = count_params(nn.unbox(boxed).params)
    out["tokens_shape"] = list(stage.tokens_shape)
    out["batch_size"] = config.batch_size
    if abstract:
        return out

    mesh = sharding.make_mesh(config)
    with sharding.active(mesh):
        init, _, state_shardings = create_state(stage.init, mesh, jax.random.key(0))
        state = init(jax.random.key(config.seed))
        step_fn, _ = jit_train_step(stage, mesh, state_shardings)
        rng = np.random.default_rng(0)
        batch = sharding.global_batch(mesh, stage.bench_batch(rng))
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch).compile()
        out["compile_s"] = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", 0.0)) if cost else 0.0
        state, metrics = compiled(state, batch)  # warm-up
        jax.block_until_ready(metrics)
        times = []
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(max(steps, 1)):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        step_s = statistics.median(times)
        # The kernel's page faults per step: memory the allocator handed back and took again
        # (see common.huge_pages_env); with glibc's huge pages they are ~26x fewer.
        out["page_faults_per_step"] = faults / max(steps, 1)
        out["step_s"] = step_s
        out["examples_per_s"] = config.batch_size / step_s
        out["flops_per_step"] = flops
        out["achieved_flops_per_s"] = flops / step_s
        if sample:
            out.update(sample_seconds(stage, state, mesh, steps))
    peak = matmul_peak_flops()
    out["matmul_peak_flops_per_s"] = peak
    # XLA's flops (rematerialisation included) over this process's measured float32 matmul.
    out["mfu"] = out["achieved_flops_per_s"] / peak
    # The model's flops over the devices' peak: a TPU's bf16 datasheet peak, or on the CPU
    # (which has no datasheet here) the measured matmul.
    device = jax.devices()[0]
    generation = next((g for g in GENERATIONS.values()
                       if DEVICE_KINDS.get(device.device_kind) == g.platform), None)
    device_peak = (peak if generation is None
                   else generation.peak_bf16_flops * jax.device_count())
    out["model_flops_per_step"] = model_flops(config, nn.unbox(boxed).params,
                                              tuple(stage.tokens_shape))
    out["device_peak_flops_per_s"] = device_peak
    out["model_mfu"] = out["model_flops_per_step"] / step_s / device_peak
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [m["peak_bytes_in_use"] for m in stats if "peak_bytes_in_use" in m]
    # The devices' peak allocation; on the CPU, the process's peak resident memory.
    out["peak_memory_bytes"] = (max(peaks) if peaks else
                                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    out["devices"] = jax.device_count()
    out["platform"] = device.platform
    return out


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        raise UsageError("--config is required")
    if _STEPS.value < 1:
        raise UsageError("--steps must be >= 1")
    result = benchmark(_CONFIG.value, _STEPS.value, _ABSTRACT.value, _SAMPLE.value)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def run() -> None:
    run_command("phenaki-bench", main)


if __name__ == "__main__":
    run()
