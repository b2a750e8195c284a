"""One mesh, logical axes: data x fsdp x model meshes of 8 emulated devices train exactly like
one device (the tokenizer's image stream included), and parameters really are split: their
`embed` dimension over `fsdp`, their `mlp` and `heads` dimensions over `model`."""

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, subprocess_env

SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, {root!r})
from tests.conftest import load_config
from phenaki_jax import sharding
from phenaki_jax.stages import registry
from phenaki_jax.stages.state import create_state
from phenaki_jax.train import loop

c = load_config("cvivit")
c.batch_size = 8
c.model.width, c.model.mlp_dim, c.model.num_heads = 32, 64, 4
c.warmup_steps = 0
c.mesh.data, c.mesh.fsdp, c.mesh.model = {data}, {fsdp}, {model}
c, stage = registry.for_training(c, jax.device_count())
mesh = sharding.make_mesh(c)
rng = np.random.default_rng(0)
with sharding.active(mesh):
    init, abstract, shardings = create_state(stage.init, mesh, jax.random.key(0))
    state = init(jax.random.key(0))
    step, _ = loop.jit_train_step(stage, mesh, shardings)
    losses = []
    for i in range(3):
        frames = rng.integers(0, 256, (8, 11, 32, 32, 3), dtype=np.uint8)
        images = rng.integers(0, 256, (c.data.image_batch_size, 1, 32, 32, 3), dtype=np.uint8)
        batch = sharding.global_batch(mesh, {{"frames": frames, "image_frames": images,
                                             "is_image": np.zeros((8,), np.int32)}})
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    wi = state.params["enc_spatial"]["block_0"]["mlp"]["wi"]["kernel"]
    mu = [x for x in jax.tree.leaves(state.opt_state) if x.shape == wi.shape][0]
    print(json.dumps({{"losses": losses, "devices": jax.device_count(),
                      "wi_spec": str(wi.sharding.spec),
                      "wi_shard_shape": list(wi.addressable_shards[0].data.shape),
                      "wi_mu_shard_shape": list(mu.addressable_shards[0].data.shape)}}))
"""


def _run(devices, data, fsdp, model, script=SCRIPT):
    env = subprocess_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    proc = subprocess.run([sys.executable, "-c", script.format(root=ROOT, data=data, fsdp=fsdp,
                                                               model=model)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("data, fsdp, model, wi_shard", [
    (4, 1, 2, [32, 32]),  # `mlp` over the 2-way model axis
    (2, 2, 2, [16, 32]),  # and `embed` over the 2-way fsdp axis
    (1, 8, 1, [4, 64]),  # `embed` over all 8 devices, fully sharded data parallelism
])
def test_meshes_of_8_devices_match_a_single_device(data, fsdp, model, wi_shard):
    one = _single_device()
    eight = _run(8, data, fsdp, model)
    assert eight["devices"] == 8
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
    # The MLP's input kernel [embed, mlp], and its optimizer state with it.
    assert eight["wi_shard_shape"] == wi_shard
    assert eight["wi_mu_shard_shape"] == wi_shard
    assert "fsdp" in eight["wi_spec"] and "model" in eight["wi_spec"]
    assert one["wi_shard_shape"] == [32, 64]


@functools.cache
def _single_device():
    return _run(1, 1, 1, 1)


def test_checkpoint_from_8_device_mesh_resumes_on_one_device(tmp_path):
    """Trained on a 4x2 mesh of 8 emulated devices, resumed on one device (and vice versa
    the restore reshards): orbax restores onto whatever mesh this process has."""
    common = ["--config=configs/cvivit.py:variant=tiny", "--config.batch_size=4",
              "--config.model.width=32", "--config.model.mlp_dim=64",
              "--config.log_every_steps=1", "--config.checkpoint_every_steps=3",
              "--config.eval_batches=0", "--config.model.spatial_layers=1",
              "--config.model.temporal_layers=1", f"--workdir={tmp_path}"]
    env8 = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    first = subprocess.run([sys.executable, "-m", "phenaki_jax.train", *common,
                            "--config.total_steps=3", "--config.mesh.data=4",
                            "--config.mesh.model=2"],
                           env=env8, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    env1 = subprocess_env()
    second = subprocess.run([sys.executable, "-m", "phenaki_jax.train", *common,
                             "--config.total_steps=5"],
                            env=env1, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 3" in second.stderr
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)


MASKGIT_SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, {root!r})
from tests.conftest import load_config
from phenaki_jax import sharding
from phenaki_jax.stages import registry
from phenaki_jax.stages.state import create_state
from phenaki_jax.train import loop

c = load_config("maskgit")
c.batch_size = 8
c.model.width, c.model.mlp_dim, c.model.num_heads, c.model.num_layers = 32, 64, 4, 2
c.text.embed_dim, c.text.mlp_dim, c.text.num_layers = 16, 32, 1
c.warmup_steps = 0
c.mesh.data, c.mesh.fsdp, c.mesh.model = {data}, {fsdp}, {model}
c, stage = registry.for_benchmark(c, jax.device_count())
mesh = sharding.make_mesh(c)
rng = np.random.default_rng(0)
with sharding.active(mesh):
    init, abstract, shardings = create_state(stage.init, mesh, jax.random.key(0))
    state = init(jax.random.key(0))
    step, _ = loop.jit_train_step(stage, mesh, shardings)
    losses = []
    for i in range(3):
        batch = sharding.global_batch(mesh, stage.bench_batch(rng))
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    block = state.params["transformer"]["transformer"]["block_0"]
    wi = block["mlp"]["wi"]["kernel"]
    q = block["cross"]["query"]["kernel"]
    print(json.dumps({{"losses": losses, "devices": jax.device_count(),
                      "wi_shard_shape": list(wi.addressable_shards[0].data.shape),
                      "cross_q_shard_shape": list(q.addressable_shards[0].data.shape)}}))
"""


def test_transformer_on_a_data_fsdp_model_mesh_matches_single_device():
    one, eight = _run(1, 1, 1, 1, MASKGIT_SCRIPT), _run(8, 2, 2, 2, MASKGIT_SCRIPT)
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
    assert eight["wi_shard_shape"] == [16, 32] and one["wi_shard_shape"] == [32, 64]
    # Cross-attention heads [embed, heads, kv]: embed over fsdp, heads over model.
    assert eight["cross_q_shard_shape"] == [16, 2, 8]


def test_logical_constraints_reach_the_compiler(config_loader):
    """The models' `nn.with_logical_constraint` must become sharding constraints in the
    compiled program: Flax drops them silently unless the mesh is set the way it reads it, and
    XLA then split activations by width and gathered the global batch on every device (the
    paper transformer's plan: 44.5 GiB per chip with one layer, 7.9 GiB with the constraints)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from phenaki_jax import sharding

    mesh = sharding.make_mesh(config_loader("cvivit"))

    def f(x):
        return nn.with_logical_constraint(x * 2, ("batch", "length", "activation_embed"))

    with sharding.active(mesh):
        text = jax.jit(f).lower(jnp.ones((2, 3, 4))).as_text()
    assert "sharding_constraint" in text
    with mesh:  # the older context alone: Flax leaves the constraint out
        assert "sharding_constraint" not in jax.jit(f).lower(jnp.ones((2, 3, 4))).as_text()
