"""tpu/: every script's --dry-run prints exactly its golden gcloud commands (reviewed by hand,
as xpk keeps its goldens), and watch.sh's wait-and-relaunch loop, driven by a fake gcloud on
PATH, re-creates a preempted spot slice and relaunches the same command."""

import hashlib
import os
import subprocess

import pytest
from conftest import ROOT

TPU = os.path.join(ROOT, "tpu")
GOLDENS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "goldens")
TRAIN = ["phenaki-train", "--multihost", "--config=configs/cvivit.py:variant=small",
         "--workdir=/mnt/shared/runs/tok"]


def _lock_hash() -> str:
    data = b"".join(open(os.path.join(ROOT, f), "rb").read()
                    for f in ("requirements.lock", "setup.py"))
    return hashlib.sha256(data).hexdigest()[:12]


def _script(name, *args, env=None):
    return subprocess.run(["bash", os.path.join(TPU, name), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "TMPDIR": "/tmp",
                                                       **(env or {})})


@pytest.mark.parametrize("golden, script, args", [
    ("create_spot", "create.sh", ["phenaki-v4-32", "us-central2-b", "v4-32", "--spot"]),
    ("create_v6e_reserved", "create.sh", ["phenaki-v6e", "us-east5-b", "v6e-64", "--reserved"]),
    ("setup", "setup.sh", ["phenaki-v4-32", "us-central2-b"]),
    ("launch", "launch.sh", ["phenaki-v4-32", "us-central2-b", "--", *TRAIN]),
    ("launch_gcs", "launch.sh", ["phenaki-v4-32", "us-central2-b", "--", *TRAIN[:-1],
                                 "--workdir=gs://phenaki-runs/tok"]),
    ("logs", "logs.sh", ["phenaki-v4-32", "us-central2-b", "--worker=all", "--lines=20"]),
    ("stop", "stop.sh", ["phenaki-v4-32", "us-central2-b"]),
    ("watch", "watch.sh", ["phenaki-v4-32", "us-central2-b", "v4-32", "--spot", "--", *TRAIN]),
])
def test_dry_run_prints_the_golden_commands(golden, script, args):
    if "--" in args:
        i = args.index("--")
        args = [*args[:i], "--dry-run", *args[i:]]
    else:
        args = [*args, "--dry-run"]
    proc = _script(script, *args)
    assert proc.returncode == 0, proc.stderr
    expected = open(os.path.join(GOLDENS, f"{golden}.txt")).read()
    expected = expected.replace("{root}", ROOT).replace("{hash}", _lock_hash())
    assert proc.stdout == expected


@pytest.mark.parametrize("script, args, needle", [
    ("create.sh", ["n", "z", "v9-8"], "unknown accelerator type 'v9-8'"),
    ("create.sh", ["n", "z"], "usage"),
    ("launch.sh", ["n", "z", "--", "phenaki-train"], "needs --workdir=DIR"),
    ("watch.sh", ["n", "z", "v4-8", "--spot"], "usage"),
    ("stop.sh", ["n", "z", "--force"], "unknown flag --force"),
])
def test_bad_arguments_get_one_line(script, args, needle):
    proc = _script(script, *args, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Records each call; answers the state and "finished?" questions from queues in files.
printf '%s\n' "$*" >> "$FAKE_LOG"
pop() { local first; first=$(head -n 1 "$1"); sed -i 1d "$1"; printf '%s' "$first"; }
case "$*" in
  *"queued-resources describe"*)
    state=$(pop "$FAKE_STATES"); [ "$state" = MISSING ] && exit 1; echo "$state" ;;
  *"grep -q 'finished:'"*) exit "$(pop "$FAKE_FINISHED")" ;;
esac
exit 0
"""


def _watch(tmp_path, states, finished, *flags):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    (tmp_path / "states").write_text("\n".join(states) + "\n")
    (tmp_path / "finished").write_text("\n".join(map(str, finished)) + "\n")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "log"),
           "FAKE_STATES": str(tmp_path / "states"), "FAKE_FINISHED": str(tmp_path / "finished"),
           "TMPDIR": str(tmp_path)}
    proc = _script("watch.sh", "phenaki-v4-32", "us-central2-b", "v4-32", "--spot",
                   "--interval=0", *flags, "--", *TRAIN, env=env)
    calls = (tmp_path / "log").read_text().splitlines()
    return proc, calls


def test_watch_recreates_a_preempted_spot_slice_and_relaunches_the_same_command(tmp_path):
    # Running, preempted, queued again until active, running, finished.
    proc, calls = _watch(tmp_path, ["ACTIVE", "SUSPENDED", "WAITING_FOR_RESOURCES", "ACTIVE",
                                    "ACTIVE"], [1, 0], "--max-relaunches=3")
    assert proc.returncode == 0, proc.stderr
    assert "relaunch 1 of at most 3" in proc.stdout and "the run finished" in proc.stdout
    keys = {"queued-resources describe": "describe", "queued-resources delete": "delete",
            "queued-resources create": "create", "tpu-vm scp": "scp", "pkill -9": "pkill -9",
            "finished": "finished"}
    kinds = [next((v for k, v in keys.items() if k in c), "other") for c in calls]
    assert kinds == ["describe", "finished", "describe", "delete", "create", "describe",
                     "describe", "scp", "other", "pkill -9", "describe", "finished"], calls
    create = next(c for c in calls if "queued-resources create" in c)
    assert "--spot" in create and "--runtime-version=tpu-ubuntu2204-base" in create
    launch = next(c for c in calls if "pkill -9" in c)
    assert " ".join(TRAIN[1:]) in launch.replace("\\", "")
    assert os.path.exists(tmp_path / f"phenaki_jax-{_lock_hash()}.tgz")


def test_watch_gives_up_after_too_many_preemptions(tmp_path):
    proc, calls = _watch(tmp_path, ["SUSPENDED", "ACTIVE", "MISSING"], [1],
                         "--max-relaunches=1")
    assert proc.returncode == 1
    assert "preempted more than 1 times" in proc.stderr
    assert sum("queued-resources create" in c for c in calls) == 1
