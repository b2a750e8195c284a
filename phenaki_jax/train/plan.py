"""A memory and time plan for a TPU pod, from the TPU compiler, on a machine without a TPU.

`plan(config, topology)` compiles the stage's real training step (the loop's `jit_train_step`,
state and batch sharded on the config's mesh) ahead of time for a named TPU topology, with
libtpu's compile-only devices (`jax.experimental.topologies`), and reads the compiler's
per-device memory (`memory_analysis`) and cost (`cost_analysis`). Nothing is allocated and no
TPU is needed. The transformer's step is compiled as it trains on given text embeddings (a
phenaki-embed cache) and random token ids: no checkpoint is read.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import topologies

from phenaki_jax import sharding
from phenaki_jax.config import ConfigError, parsing
from phenaki_jax.config.validation import mesh_shape
from phenaki_jax.stages import registry
from phenaki_jax.stages.state import create_state
from phenaki_jax.train.loop import jit_train_step

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: how its pod names count (TensorCores for v4 and v5p, whose chips
    are one megacore device; chips otherwise), its HBM and its bf16 peak per chip."""

    platform: str  # libtpu's topology prefix
    chip_config: str
    cores_per_chip: int
    hbm_bytes: int
    peak_bf16_flops: float
    shapes: dict[int, str]  # chips -> topology shape


_CUBES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"}
_SLICES = {8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
GENERATIONS = {
    "v4": Generation("v4", "megacore", 2, 32 * GIB, 275e12, _CUBES),
    "v5p": Generation("v5p", "megacore", 2, 95 * GIB, 459e12, _CUBES),
    "v5litepod": Generation("v5e", "default", 1, 16 * GIB, 197e12, _SLICES),
    "v6e": Generation("v6e", "default", 1, 32 * GIB, 918e12, _SLICES),
}


# `device_kind` of each generation's chips -> its topology prefix.
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5": "v5p", "TPU v5 lite": "v5e", "TPU v6 lite": "v6e"}


def topology_names() -> list[str]:
    """Every name `plan` takes: v4-8 ... v4-256, v5litepod-8 ... v6e-256."""
    return [f"{name}-{chips * g.cores_per_chip}" for name, g in GENERATIONS.items()
            for chips in g.shapes]


def parse_topology(name: str) -> tuple[Generation, int]:
    """(generation, chips) of a pod name such as `v4-64` (32 chips) or `v5litepod-256`."""
    generation, _, size = name.rpartition("-")
    g = GENERATIONS.get(generation)
    if g is None or not size.isdigit() or int(size) % g.cores_per_chip or (
            int(size) // g.cores_per_chip) not in g.shapes:
        raise ConfigError(f"--topology={name} is not a known TPU pod; known: "
                          f"{', '.join(topology_names())}")
    return g, int(size) // g.cores_per_chip


def compile_only_devices(name: str) -> tuple[Generation, list[Any]]:
    """The compile-only TPU devices of a named pod (libtpu; no TPU needed)."""
    g, chips = parse_topology(name)
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{g.platform}:{g.shapes[chips]}",
        chip_config_name=g.chip_config, chips_per_host_bounds=(2, 2, 1), num_slices=1)
    return g, list(desc.devices)


def count_params(tree: Any) -> int:  # noqa: ANN401
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def model_flops(config: ml_collections.ConfigDict, params: Any,  # noqa: ANN401
                tokens_shape: tuple[int, int, int]) -> float:
    """Analytic training flops of one step: 6 x parameters x tokens for the matmuls, plus
    attention's scores and weighted sums (12 x L^2 x width per layer and example, forward and
    backward). The tokenizer's discriminator and LPIPS are not counted, nor the frozen
    tokenizer inside the transformer's step."""
    b, (t, h, w) = config.batch_size, tokens_shape
    d = config.model.width
    if config.stage == "maskgit":
        length, text = t * h * w, config.text.max_length
        n = count_params(params["transformer"])
        layers = config.model.num_layers
        flops = 6.0 * n * b * length + 12.0 * layers * b * d * length * (length + text)
        if "text" in params:  # the text encoder trained with it
            flops += 6.0 * count_params(params["text"]) * b * text
        return flops
    images = config.data.get("image_batch_size", 0)
    tokens = b * t * h * w + images * h * w
    spatial = 12.0 * config.model.spatial_layers * d * (b * t + images) * (h * w) ** 2
    temporal = 12.0 * config.model.temporal_layers * d * b * h * w * t ** 2
    # The decoder attends globally; the encoder too unless each tubelet attends to itself
    # alone (`encoder_window=0`; a window r > 0 is counted as global).
    stacks = 1 if config.model.get("encoder_window", -1) == 0 else 2
    return 6.0 * count_params(params) * tokens + stacks * (spatial + temporal)


def plan(config: ml_collections.ConfigDict, topology: str, mfu: float = 0.4) -> dict[str, Any]:
    """Compiles `config`'s training step for `topology`; the JSON-able report."""
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")
    generation, devices = compile_only_devices(topology)
    chips = len(devices)
    config, stage = registry.for_benchmark(config, chips)
    sizes = mesh_shape(config, chips)
    mesh = sharding.make_mesh(config, devices)
    rng = jax.random.key(0)  # made on the host: the mesh's devices can compile, not run
    with sharding.active(mesh):
        _, abstract, state_shardings = create_state(stage.init, mesh, rng)
    params = abstract.params
    out: dict[str, Any] = {
        "topology": topology, "platform": devices[0].platform, "device_kind":
        devices[0].device_kind, "chips": chips, "mesh": sizes, "stage": config.stage,
        "variant": config.variant, "global_batch": config.batch_size,
        "per_device_batch": config.batch_size / (sizes["data"] * sizes["fsdp"]),
        "params": count_params(params), "dtype": config.model.dtype,
        "remat": str(config.model.get("remat", "none")),
        "attention": str(config.model.get("attention", "xla")),
        "hbm_bytes": generation.hbm_bytes}
    with sharding.active(mesh):
        step, batch_shardings = jit_train_step(stage, mesh, state_shardings)
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k])
                 for k, v in stage.example_batch().items() if k in stage.batch_axes}
        t0 = time.perf_counter()
        try:
            compiled = step.lower(abstract, batch).compile()
        except Exception as e:  # noqa: BLE001 - the compiler's own refusal is the answer
            message = " ".join(str(e).split())
            if "RESOURCE_EXHAUSTED" not in message and "memory" not in message.lower():
                raise
            out.update(fits=False, error=message[:2000],
                       compile_s=round(time.perf_counter() - t0, 2))
            return out
        out["compile_s"] = round(time.perf_counter() - t0, 2)
    memory = compiled.memory_analysis()
    argument, output = memory.argument_size_in_bytes, memory.output_size_in_bytes
    temp, alias = memory.temp_size_in_bytes, memory.alias_size_in_bytes
    total = argument + output + temp - alias
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    flops = model_flops(config, params, tuple(stage.tokens_shape))
    out.update({
        "argument_bytes": argument, "output_bytes": output, "temp_bytes": temp,
        "alias_bytes": alias, "total_bytes": total, "total_gib": round(total / GIB, 3),
        "fits": total <= generation.hbm_bytes,
        "headroom": round(1 - total / generation.hbm_bytes, 4),
        # The compiler's counts are per device; the step's are over every chip.
        "flops_per_step": float(cost.get("flops", 0.0)) * chips,
        # The compiler's own estimate, when it gives a usable one (compile-only devices
        # report a negative placeholder).
        "compiler_optimal_s": (float(cost["optimal_seconds"])
                               if cost.get("optimal_seconds", -1) > 0 else None),
        "model_flops_per_step": flops, "mfu_assumed": mfu,
        "peak_bf16_flops_per_chip": generation.peak_bf16_flops,
        "step_s_estimate": flops / (chips * generation.peak_bf16_flops * mfu)})
    return out


# The plans `phenaki-plan --matrix=NAME` compiles: (stage, variant, topology, overrides).
# `paper`: the paper stages at the paper's batch with their defaults and the levers around
# them; `tiny`: two small compiles for CI.
_SMALL = {"model.width": 32, "model.mlp_dim": 64}
MATRICES: dict[str, list[tuple[str, str, str, dict[str, Any]]]] = {
    "paper": [
        ("cvivit", "paper", "v4-32", {}),
        ("cvivit", "paper", "v4-32", {"discriminator.remat": "full"}),
        ("maskgit", "paper", "v4-64", {}),
        ("maskgit", "paper", "v4-64", {"model.remat": "save_dots"}),
        ("maskgit", "paper", "v4-64", {"model.attention": "xla"}),
        ("maskgit", "paper", "v4-64", {"model.scan_layers": False}),
        ("maskgit", "paper", "v4-64", {"mesh.fsdp": 16, "mesh.model": 2}),
        ("maskgit", "paper", "v5litepod-256", {}),
    ],
    "tiny": [
        ("cvivit", "tiny", "v4-8", {**_SMALL, "model.spatial_layers": 1,
                                     "model.temporal_layers": 1}),
        ("maskgit", "tiny", "v5litepod-8", {**_SMALL, "model.num_layers": 1,
                                            "model.scan_layers": True}),
    ],
}


def matrix_config(stage: str, variant: str, overrides: dict[str, Any]
                  ) -> ml_collections.ConfigDict:
    config = parsing.variant_config(stage, variant)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def matrix_table(rows: list[dict[str, Any]]) -> str:
    """The plans as a Markdown table (GiB per chip against HBM, compile and step time)."""
    lines = ["| stage | pod | mesh (data x fsdp x model) | per chip | remat | attention | "
             "changed | GiB per chip / HBM | fits (headroom) | compile s | step s (est.) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mesh = "x".join(str(r["mesh"][a]) for a in ("data", "fsdp", "model"))
        hbm = r["hbm_bytes"] / GIB
        used = f"{r['total_gib']:.1f} / {hbm:.0f}" if "total_gib" in r else f"OOM / {hbm:.0f}"
        fits = f"yes ({r['headroom']:.0%})" if r.get("fits") else "no"
        step = f"{r['step_s_estimate']:.2f}" if "step_s_estimate" in r else ""
        changed = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "defaults"
        lines.append(f"| {r['stage']} {r['variant']} | {r['topology']} | {mesh} | "
                     f"{r['per_device_batch']:g} | {r['remat']} | {r.get('attention', '')} | "
                     f"{changed} | {used} | {fits} | {r['compile_s']:.0f} | {step} |")
    return "\n".join(lines) + "\n"
