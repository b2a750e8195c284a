"""Every command re-executes itself once with huge pages for glibc's heap (cli.huge_pages_env):
same process, same arguments, the user's own GLIBC_TUNABLES kept, and an opt-out."""

import os
import subprocess
import sys

import pytest

from phenaki_jax.cli import common as cli

PROBE = """
import os, sys
from absl import flags
from phenaki_jax.cli import common as cli
NAME = flags.DEFINE_string("name", "", "")
def main(argv):
    print(os.getpid(), os.environ.get("GLIBC_TUNABLES", "<unset>"), NAME.value, argv[1:])
cli.run("probe", main)
"""

needs_thp = pytest.mark.skipif(
    cli.huge_pages_env({}) is None,
    reason="not Linux with glibc and transparent huge pages")


def probe(tmp_path, tunables: str | None, **extra: str) -> tuple[subprocess.Popen, str]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", cli.HUGE_PAGES_OPT_OUT)}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    env.update(extra)
    proc = subprocess.Popen([sys.executable, str(script), "--name=a b", "rest"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    return proc, out.strip()


@needs_thp
def test_reexecutes_in_place_with_the_same_arguments(tmp_path):
    proc, out = probe(tmp_path, None)
    pid, tunables, rest = out.split(" ", 2)
    assert int(pid) == proc.pid  # the same process (execve), not a child
    assert tunables == cli.HUGE_PAGES_TUNABLE
    assert rest == "a b ['rest']"


@needs_thp
def test_keeps_the_users_tunables(tmp_path):
    _, out = probe(tmp_path, "glibc.malloc.arena_max=2")
    assert out.split(" ")[1] == f"glibc.malloc.arena_max=2:{cli.HUGE_PAGES_TUNABLE}"


def test_opt_out_and_already_set_leave_the_environment_alone(tmp_path):
    _, out = probe(tmp_path, "glibc.malloc.arena_max=2", **{cli.HUGE_PAGES_OPT_OUT: "0"})
    assert out.split(" ")[1] == "glibc.malloc.arena_max=2"
    assert cli.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert cli.huge_pages_env({cli.HUGE_PAGES_OPT_OUT: "0"}) is None
