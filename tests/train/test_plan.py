"""phenaki-plan: the real training step compiled for a TPU pod by the TPU compiler (libtpu's
compile-only devices) on this CPU machine, with the compiler's memory and the pod's HBM."""

import json

import pytest
from conftest import assert_one_line_error, run_cli

from phenaki_jax.config import ConfigError

GIB = 1 << 30
# One layer per stack at width 32: what these tests check does not depend on size, and the
# TPU compiler's time grows with it.
SMALL_TOKENIZER = ["--config=configs/cvivit.py:variant=tiny", "--config.model.width=32",
                   "--config.model.mlp_dim=64", "--config.model.spatial_layers=1",
                   "--config.model.temporal_layers=1", "--config.data.image_batch_size=8"]
SMALL_TRANSFORMER = ["--config=configs/maskgit.py:variant=tiny", "--config.model.width=32",
                     "--config.model.mlp_dim=64", "--config.model.num_layers=1",
                     "--config.text.num_layers=1", "--config.text.embed_dim=32",
                     "--config.text.mlp_dim=64"]


@pytest.mark.parametrize("name, chips, hbm_gib", [
    ("v4-8", 4, 32), ("v4-64", 32, 32), ("v4-256", 128, 32), ("v5p-8", 4, 95),
    ("v5litepod-8", 8, 16), ("v5litepod-256", 256, 16), ("v6e-64", 64, 32)])
def test_pod_names_count_chips_as_cloud_tpu_does(name, chips, hbm_gib):
    from phenaki_jax.train.plan import parse_topology

    generation, n = parse_topology(name)
    assert n == chips and generation.hbm_bytes == hbm_gib * GIB


@pytest.mark.parametrize("name", ["v4-12", "v4-512", "v7-8", "tpu", "v5litepod-4", "v5e-8"])
def test_unknown_pods_are_refused_by_name(name):
    from phenaki_jax.train.plan import parse_topology

    with pytest.raises(ConfigError, match=f"--topology={name} is not a known TPU pod"):
        parse_topology(name)


def _plan(*args):
    proc = run_cli("plan", *args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flags, topology, chips, mesh", [
    (SMALL_TOKENIZER, "v4-8", 4, {"data": 1, "fsdp": 4, "model": 1}),
    (SMALL_TRANSFORMER + ["--config.mesh.model=2"], "v5litepod-8", 8,
     {"data": 1, "fsdp": 4, "model": 2}),
])
def test_tiny_stages_compile_for_a_pod_with_the_tpu_compiler(flags, topology, chips, mesh):
    out = _plan(*flags, f"--topology={topology}")
    assert out["platform"] == "tpu" and out["chips"] == chips and out["mesh"] == mesh
    assert out["per_device_batch"] == out["global_batch"] / (mesh["data"] * mesh["fsdp"])
    total = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
             - out["alias_bytes"])
    assert out["total_bytes"] == total and 0 < total < out["hbm_bytes"]
    assert out["fits"] is True
    assert out["headroom"] == pytest.approx(1 - total / out["hbm_bytes"], abs=1e-4)
    # The state is donated: its buffers are the outputs' too.
    assert out["alias_bytes"] > 0
    # The analytic count and the compiler's (per device, times the chips) agree roughly.
    assert 0.5 < out["model_flops_per_step"] / out["flops_per_step"] < 2.0
    assert out["step_s_estimate"] == pytest.approx(
        out["model_flops_per_step"] / (chips * out["peak_bf16_flops_per_chip"] * 0.4))


def test_a_step_that_does_not_fit_says_so_with_the_compilers_message():
    out = _plan(*SMALL_TOKENIZER, "--config.batch_size=262144", "--config.data.image_batch_size=0",
                "--topology=v5litepod-8")
    assert out["fits"] is False and "RESOURCE_EXHAUSTED" in out["error"]
    assert "HBM" in out["error"] and out["per_device_batch"] == 32768


def test_bad_inputs_get_one_line():
    cases = [
        (["--topology=v4-12"], "--topology=v4-12 is not a known TPU pod"),
        (["--topology=v4-8", "--config.mesh.model=3"], "config.mesh"),
        (["--topology=v4-8", "--config.batch_size=6"], "config.batch_size=6"),
    ]
    for extra, needle in cases:
        assert_one_line_error(run_cli("plan", *SMALL_TOKENIZER, *extra), needle)


def test_the_tiny_matrix_compiles_every_row_and_writes_the_table(tmp_path):
    proc = run_cli("plan", "--matrix=tiny", f"--table={tmp_path / 'plan.md'}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [(r["stage"], r["topology"]) for r in rows] == [("cvivit", "v4-8"),
                                                           ("maskgit", "v5litepod-8")]
    assert all(r["platform"] == "tpu" and r["fits"] for r in rows)
    assert rows[1]["overrides"]["model.scan_layers"] is True  # scanned layers compile for TPU
    table = (tmp_path / "plan.md").read_text().splitlines()
    assert len(table) == 2 + len(rows)
    assert table[2].startswith("| cvivit tiny | v4-8 | 1x4x1 | 2 |")
    assert_one_line_error(run_cli("plan", "--matrix=huge"), "--matrix=huge is not a plan set")
