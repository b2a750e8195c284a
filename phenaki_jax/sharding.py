"""One device mesh for every stage, and the logical-axis rules that map model axes onto it.

Model code names only logical axes, in t5x's vocabulary (`batch`, `length`, `embed`, `mlp`,
`heads`, `kv`, `vocab`, plus `codebook` and `code` for the quantizer, and `activation_embed`
for the width of activations); the rules below map them to the mesh axes `data`, `fsdp` and
`model` (MaxText's names). Changing the parallelism of a run is a change of `config.mesh`
alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from phenaki_jax.config.validation import MESH_AXES, mesh_shape

# The batch over data x fsdp; parameters (and their optimizer state) split their `embed`
# dimension over fsdp (ZeRO-3 style: XLA gathers each layer's weights where they are used);
# Megatron-style tensor parallelism on `model`. Activations keep their width whole.
BATCH_AXES = ("data", "fsdp")
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "model"),
    ("codebook", None),
    ("code", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("embed", "fsdp"),
    ("activation_embed", None),
    ("length", None),
    ("time", None),
    ("height", None),
    ("width", None),
    ("channels", None),
    ("text_length", None),
    ("text_embed", None),
    ("layers", None),  # the stacked axis of scanned blocks
)


def make_mesh(config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ('data', 'fsdp', 'model') mesh of `config.mesh` (-1 takes the remaining devices),
    laid out by `jax.make_mesh` on the devices' topology (on TPU, `model` and `fsdp` stay
    within the fast links)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(config, len(devices))
    # Auto axes: XLA propagates shardings from the jit boundaries and logical constraints.
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None]) -> NamedSharding:
    """A NamedSharding for an array whose dimensions carry these logical names."""
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), LOGICAL_AXIS_RULES)
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def tree_shardings(mesh: Mesh, abstract_tree: Any) -> Any:
    """Shardings for a pytree whose leaves may be `nn.LogicallyPartitioned` (from eval_shape).

    Leaves without logical names (optimizer counters, step, RNG) are replicated.
    """
    specs = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(specs, LOGICAL_AXIS_RULES)
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s if s is not None else PartitionSpec()),
        mesh_specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None,
    )


@contextlib.contextmanager
def active(mesh: Mesh) -> Iterator[None]:
    """`mesh` and the logical-axis rules in force, so that `nn.with_logical_constraint`
    inside the models pins activations onto the mesh. Flax reads the mesh that `jax.set_mesh`
    sets; under the older `with mesh:` context alone every constraint is silently dropped,
    and XLA is free to split activations by width and gather the whole batch on every device.
    The abstract mesh, not `jax.set_mesh`: eager work inside (an initialiser's constants) must
    still run on the host when the mesh is made of compile-only TPU devices."""
    with nn.logical_axis_rules(LOGICAL_AXIS_RULES), \
            jax.sharding.use_abstract_mesh(mesh.abstract_mesh), mesh:
        yield


def global_batch(mesh: Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles each host's slice of the batch into global arrays sharded along data x
    fsdp."""
    def put(x: np.ndarray) -> jax.Array:
        spec = PartitionSpec(BATCH_AXES, *([None] * (x.ndim - 1)))
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)

    return {k: put(v) for k, v in local.items()}
