"""Fault injection on real training processes: SIGTERM, SIGKILL, corrupted checkpoints,
divergence. A resumed run must log exactly the losses of a run that never stopped."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from conftest import subprocess_env as env

pytestmark = pytest.mark.slow

MICRO = ["--config=configs/cvivit.py:variant=tiny", "--config.total_steps=40",
         "--config.batch_size=4", "--config.model.width=32", "--config.model.mlp_dim=64",
         "--config.model.patch_size=8", "--config.log_every_steps=1",
         "--config.checkpoint_every_steps=10", "--config.eval_batches=0",
         "--config.warmup_steps=5", "--config.quantizer.restart_every_steps=7",
         "--config.model.spatial_layers=1", "--config.model.temporal_layers=1"]


def train_cmd(workdir, *extra):
    return [sys.executable, "-m", "phenaki_jax.train", *MICRO, f"--workdir={workdir}", *extra]


def losses(workdir):
    """step -> loss; a step logged twice (before a kill and after the resume) keeps the last."""
    out = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


def wait_for_step(workdir, step, proc, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-3000:]}")
        if os.path.exists(path) and any(json.loads(x).get("step", 0) >= step
                                         for x in open(path) if x.strip()):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never logged")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference"))
    subprocess.run(train_cmd(workdir), cwd=ROOT, env=env(), check=True, capture_output=True)
    return losses(workdir)


def test_sigterm_checkpoints_exits_zero_and_resumes_exactly(reference, tmp_path):
    workdir = str(tmp_path)
    proc = subprocess.Popen(train_cmd(workdir), cwd=ROOT, env=env(), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    wait_for_step(workdir, 15, proc)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 0
    assert time.time() - sent < 60
    stopped = max(losses(workdir))
    assert 15 <= stopped < 40
    steps = sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/[0-9]*"))
    assert stopped in steps  # the preemption checkpoint is the stopping step itself
    subprocess.run(train_cmd(workdir), cwd=ROOT, env=env(), check=True, capture_output=True)
    resumed = losses(workdir)
    for step in range(stopped + 1, 41):
        np.testing.assert_allclose(resumed[step], reference[step], rtol=1e-5)


def test_sigkill_loses_only_steps_since_last_checkpoint(reference, tmp_path):
    workdir = str(tmp_path)
    proc = subprocess.Popen(train_cmd(workdir), cwd=ROOT, env=env(), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    wait_for_step(workdir, 25, proc)
    proc.kill()
    proc.wait()
    steps = sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/[0-9]*")
                   if os.path.basename(p).isdigit())
    # Saves are asynchronous: the step-20 save may still have been in flight (in a temporary
    # directory, never listed) when the kill came; then step 10 is the newest complete one.
    assert steps and steps[-1] >= 10
    assert not any(not os.path.basename(p).isdigit()
                   for p in glob.glob(f"{workdir}/checkpoints/[0-9]*") if "tmp" not in p)
    out = subprocess.run(train_cmd(workdir), cwd=ROOT, env=env(), capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {steps[-1]}" in out.stderr
    resumed = losses(workdir)
    for step in range(steps[-1] + 1, 41):
        np.testing.assert_allclose(resumed[step], reference[step], rtol=1e-5)


def test_leftover_temporary_checkpoint_is_gone_when_the_checkpointer_is_built(tmp_path):
    """A save killed mid-write leaves `<step>.orbax-checkpoint-tmp`. Orbax removes it in a
    background thread; that thread must be done before the trainer goes on, or a run that
    stops early (a refused config) exits while it still runs and dies with a traceback."""
    from phenaki_jax import checkpoint as ckpt_lib

    leftover = tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "partial").write_bytes(b"\0" * 4096)
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
    assert not leftover.exists()
    assert checkpointer.steps() == []
    checkpointer.close()


def test_corrupted_newest_checkpoint_falls_back_to_previous(reference, tmp_path):
    workdir = str(tmp_path)
    subprocess.run(train_cmd(workdir), cwd=ROOT, env=env(), check=True, capture_output=True)
    newest = os.path.join(workdir, "checkpoints", "40")
    data_files = [p for p in glob.glob(f"{newest}/state/**/*", recursive=True)
                  if os.path.isfile(p) and os.path.getsize(p) > 1000]
    assert data_files
    for p in data_files:  # truncate the array data of the newest checkpoint
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) // 3)
    out = subprocess.run(train_cmd(workdir), cwd=ROOT, env=env(), capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "checkpoint step 40" in out.stderr and "unusable" in out.stderr
    assert "resumed from step 30" in out.stderr
    # eval_batches=0: no evaluation, periodic or final, in either run.
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert rows and not any(k.startswith("eval_") for r in rows for k in r)
    resumed = losses(workdir)  # steps 31..40 were logged again by the resumed run
    for step in range(31, 41):
        np.testing.assert_allclose(resumed[step], reference[step], rtol=1e-5)


def test_divergence_stops_with_one_line_and_leaves_finite_checkpoints(tmp_path):
    workdir = str(tmp_path)
    subprocess.run(train_cmd(workdir, "--config.total_steps=10"), cwd=ROOT, env=env(),
                   check=True, capture_output=True)
    out = subprocess.run(train_cmd(workdir, "--config.learning_rate=1e6",
                                   "--config.total_steps=40"),
                         cwd=ROOT, env=env(), capture_output=True, text=True)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "not finite" in errors[0] and "step " in errors[0]
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert max(r.get("nonfinite_steps", 0) for r in rows) >= 1
    # Every checkpoint left behind restores and is finite.
    probe = f"""
import sys, jax, numpy as np
sys.path.insert(0, {ROOT!r})
from phenaki_jax.checkpoint import CheckpointError
from phenaki_jax.stages import registry
cfg, stage, state = registry.restore_for_inference({workdir!r})
leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
assert all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.inexact))
# The first run's last checkpoint, by its step; a step with no checkpoint is named.
assert int(registry.restore_for_inference({workdir!r}, step=10)[2].step) == 10
try:
    registry.restore_for_inference({workdir!r}, step=7)
    raise SystemExit("step 7 restored")
except CheckpointError as e:
    assert "no checkpoint of step 7" in str(e), e
print(int(state.step))
"""
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env(),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def test_sigterm_at_a_checkpoint_step_saves_once_and_exits_zero(tmp_path):
    """Every step checkpoints, so the SIGTERM lands on a step whose periodic save has begun:
    the stop must not save that step a second time (orbax refuses it)."""
    workdir = str(tmp_path)
    proc = subprocess.Popen(train_cmd(workdir, "--config.checkpoint_every_steps=1"), cwd=ROOT,
                            env=env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    wait_for_step(workdir, 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    stopped = max(losses(workdir))
    assert f"checkpoint of step {stopped} is durable" in err
