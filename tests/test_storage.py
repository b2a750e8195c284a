"""The storage layer's rules that need no server: which variables steer each library's gs://
I/O, how paths join, and atomic writes on disk (the gs:// behaviour itself is tested against a
real GCS server in tests/e2e/test_gcs.py)."""

import os

import pytest

from phenaki_jax import storage


def test_an_emulator_host_points_tensorstore_at_the_same_endpoint():
    env = storage.environment_defaults({"STORAGE_EMULATOR_HOST": "127.0.0.1:9023"})
    assert env == {"EPATH_USE_TF": "false", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                   "TENSORSTORE_GCS_HTTP_URL": "http://127.0.0.1:9023",
                   "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}


def test_variables_the_user_set_are_kept():
    env = storage.environment_defaults({"STORAGE_EMULATOR_HOST": "http://h:1/",
                                        "TENSORSTORE_GCS_HTTP_URL": "http://other:2",
                                        "EPATH_USE_TF": "true"})
    assert env == {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                   "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
    assert "TENSORSTORE_GCS_HTTP_URL" not in storage.environment_defaults({})


@pytest.mark.parametrize("directory, relative, expected", [
    ("gs://b/data", "clips/a.mp4", "gs://b/data/clips/a.mp4"),
    ("gs://b/data", "gs://c/x.png", "gs://c/x.png"),
    ("/d/data", "../clips/a.mp4", "/d/clips/a.mp4"),
    ("/d/data", "/abs/a.mp4", "/abs/a.mp4"),
])
def test_relative_media_paths_resolve_against_their_manifest(directory, relative, expected):
    assert storage.join_under(directory, relative) == expected


def test_remote_paths_are_never_made_absolute_on_disk():
    assert storage.resolve("gs://bucket/run") == "gs://bucket/run"
    assert storage.resolve("run") == os.path.join(os.getcwd(), "run")
    assert storage.bucket_of("gs://bucket/run/checkpoints") == "gs://bucket"


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), storage.atomic_path(str(target)) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]
    storage.write_text(str(target), "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["report.json"]


def test_a_local_mirror_is_the_directory_itself(tmp_path):
    mirror = storage.Mirror(str(tmp_path / "run"))
    assert mirror.dir == str(tmp_path / "run") and os.path.isdir(mirror.dir)
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    mirror.close()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == "{}\n"
