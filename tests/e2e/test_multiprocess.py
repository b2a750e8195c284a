"""Several processes, one mesh: two `phenaki-train` processes joined by `jax.distributed` on
localhost (as the hosts of a TPU pod are) train exactly as one process does on the same global
batches, stop together when one of them alone is preempted, and resume exactly."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, run_cli, subprocess_env

STEPS = 30
CONFIG = ["--config=configs/cvivit.py:variant=tiny", f"--config.total_steps={STEPS}",
          "--config.batch_size=4", "--config.model.width=32", "--config.model.mlp_dim=64",
          "--config.model.codebook_size=64", "--config.warmup_steps=5",
          "--config.log_every_steps=1", "--config.checkpoint_every_steps=1000",
          "--config.eval_batches=0",
          "--config.quantizer.restart_every_steps=7",
          "--config.model.spatial_layers=1", "--config.model.temporal_layers=1"]

# The same steps in one process on a mesh of two devices, fed the global batch the two
# processes assemble (process 0's shard of the stream, then process 1's).
# A replay that has not exited by the watchdog's time prints every thread's stack and exits 1.
REPLAY = r"""
import faulthandler, json, sys
faulthandler.dump_traceback_later(420, exit=True)
import jax, numpy as np
sys.path.insert(0, {root!r})
from phenaki_jax import sharding
from phenaki_jax.data import pipeline
from phenaki_jax import checkpoint as ckpt_lib
from phenaki_jax.stages import registry
from phenaki_jax.stages.state import create_state
from phenaki_jax.train import loop

ckpt = ckpt_lib.Checkpointer({workdir!r}, read_only=True)
_, c = ckpt.latest_config()
assert jax.device_count() == 2
mesh = sharding.make_mesh(c)
c, stage = registry.for_training(c)
shards = [pipeline.host_batches(c, c.data.train_split, process_index=i, process_count=2)
          for i in range(2)]
losses = []
with sharding.active(mesh):
    init, abstract, shardings = create_state(stage.init, mesh, jax.random.key(c.seed))
    state = init(jax.random.key(c.seed))
    step, _ = loop.jit_train_step(stage, mesh, shardings)
    for _ in range(c.total_steps):
        parts = [next(s) for s in shards]
        batch = {{k: np.concatenate([p[k] for p in parts]) for k in stage.batch_axes}}
        state, m = step(state, sharding.global_batch(mesh, batch))
        losses.append(float(m["loss"]))
    saved, meta = ckpt.restore_latest(abstract)
ckpt.close()
diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                    state.params, saved.params)
print(json.dumps({{"losses": losses, "saved_step": int(saved.step),
                  "max_param_diff": max(jax.tree.leaves(diff))}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir: str, logdir) -> list[subprocess.Popen]:
    port = _free_port()
    env = subprocess_env(XLA_FLAGS="")  # one CPU device per process
    procs = []
    for i in range(2):
        with open(logdir / f"process{i}.log", "a") as log:  # the child keeps its own handle
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "phenaki_jax.train", *CONFIG, f"--workdir={workdir}",
                 f"--coordinator_address=localhost:{port}", "--num_processes=2",
                 f"--process_id={i}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs, logdir, timeout=300):
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    logs = [(logdir / f"process{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    return logs


def _lines(path: str) -> int:
    """Complete lines so far of a file another process is appending to (0 if none yet)."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return f.read().count("\n")


def _logged_losses(workdir: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                out[row["step"]] = row["loss"]  # a resumed run rewrites later steps
    return out


def test_two_processes_preempted_on_one_resume_and_match_one_process(tmp_path):
    workdir = str(tmp_path / "run")
    metrics = os.path.join(workdir, "metrics.jsonl")
    procs = _launch(workdir, tmp_path)
    deadline = time.time() + 300
    while _lines(metrics) < 3:
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            (tmp_path / "process0.log").read_text()[-3000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice reaches one host only
    logs = _wait(procs, tmp_path)
    stops = [int(log.split("preempted: checkpoint of step ")[1].split()[0]) for log in logs]
    assert stops[0] == stops[1] < STEPS, "the processes stopped at different steps"
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(stops[0])]

    logs = _wait(_launch(workdir, tmp_path), tmp_path)
    assert all(f"resumed from step {stops[0]}" in log for log in logs)

    proc = subprocess.run(
        [sys.executable, "-c", REPLAY.format(root=ROOT, workdir=workdir)], cwd=ROOT,
        env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replay = json.loads(proc.stdout.strip().splitlines()[-1])
    logged = _logged_losses(workdir)
    assert sorted(logged) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([logged[s] for s in range(1, STEPS + 1)], replay["losses"],
                               rtol=1e-5)
    assert replay["saved_step"] == STEPS
    assert replay["max_param_diff"] < 1e-5


@pytest.mark.parametrize("flags, needle", [
    (["--num_processes=2"], "--coordinator_address, --num_processes and --process_id"),
    (["--coordinator_address=localhost:1", "--num_processes=2", "--process_id=2"],
     "--process_id must be in [0, 2)"),
    (["--coordinator_address=localhost:1", "--num_processes=0", "--process_id=0"],
     "--num_processes must be >= 1"),
    (["--multihost"], "--multihost: JAX found no cluster"),
])
def test_bad_multiprocess_flags_one_line(tmp_path, flags, needle):
    proc = run_cli("train", "--config=configs/cvivit.py:variant=tiny",
                   f"--workdir={tmp_path / 'run'}", *flags, timeout=120)
    assert_one_line_error(proc, needle)
    assert not os.path.exists(tmp_path / "run")
