"""gs:// workdirs for real, against a local GCS server (gcp-storage-emulator on 127.0.0.1):
a run trains into a bucket, is stopped by SIGTERM, resumes exactly from it, and the commands
read their models from it. The bucket is inspected with Google's own client library, not
through the project's storage layer."""

import io
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

pytestmark = pytest.mark.slow

BUCKET = "bucket"
# A 40-step run that checkpoints every 10 steps: long enough to be stopped in the middle.
RUN = ["--config=configs/cvivit.py:variant=tiny", "--config.total_steps=40",
       "--config.batch_size=4", "--config.model.width=32", "--config.model.mlp_dim=64",
       "--config.model.patch_size=8", "--config.log_every_steps=1",
       "--config.checkpoint_every_steps=10", "--config.eval_batches=0",
       "--config.warmup_steps=5", "--config.quantizer.restart_every_steps=7",
       "--config.model.spatial_layers=1", "--config.model.temporal_layers=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_generation_headers():
    """gcp-storage-emulator sends no `x-goog-generation` header with an object's bytes; real GCS
    always does, and tensorstore (orbax's array store) refuses a read without it. The test's
    server adds it from the object's own metadata; nothing else of the emulator changes."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    original = getattr(objects.download, "__wrapped__", objects.download)

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])
        except Exception:  # noqa: BLE001 - a missing object is the handler's own 404
            pass
        return original(request, response, storage, *args, **kwargs)

    download.__wrapped__ = original
    objects.download = download  # objects.get (?alt=media) calls it by name
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            if handler is original:
                handlers[method] = download
    return server


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(environment pointing at the server, a google-cloud-storage bucket handle)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_client

    server = _with_generation_headers()
    port = _free_port()
    emulator = server.create_server("127.0.0.1", port, default_bucket=BUCKET,
                                    data_dir=str(tmp_path_factory.mktemp("gcs")))
    emulator.start()
    host = f"http://127.0.0.1:{port}"
    os.environ["STORAGE_EMULATOR_HOST"] = host  # read by the client below
    client = gcs_client.Client(project="test", credentials=AnonymousCredentials())
    yield {"STORAGE_EMULATOR_HOST": host}, client.bucket(BUCKET)
    del os.environ["STORAGE_EMULATOR_HOST"]
    emulator.stop()


def names(bucket, prefix: str) -> list[str]:
    return sorted(b.name for b in bucket.list_blobs(prefix=prefix))


def committed_steps(bucket, run: str) -> list[int]:
    """Checkpoint steps whose orbax commit marker is in the bucket."""
    steps = set()
    for name in names(bucket, f"{run}/checkpoints/"):
        parts = name.split("/")
        if parts[2].isdigit() and parts[-1] == "commit_success.txt" and len(parts) == 4:
            steps.add(int(parts[2]))
    return sorted(steps)


def losses_from(text: str) -> dict[int, float]:
    out = {}
    for line in text.splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


def train(workdir: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "phenaki_jax.train", *RUN,
                             f"--workdir={workdir}"], cwd=ROOT, env=subprocess_env(**env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def bucket_run(gcs, tmp_path_factory):
    """A run into gs://bucket/run stopped by SIGTERM and resumed, beside a local run that never
    stopped: (losses of the local run, losses logged in the bucket, the step it stopped at)."""
    env, bucket = gcs
    local = str(tmp_path_factory.mktemp("local_run"))
    reference = train(local, env)
    proc = train(f"gs://{BUCKET}/run", env)
    deadline = time.time() + 300
    while not committed_steps(bucket, "run"):
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, "no checkpoint reached the bucket"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    stopped = committed_steps(bucket, "run")[-1]
    assert 10 <= stopped < 40
    assert f"checkpoint of step {stopped} is durable" in err
    resumed = train(f"gs://{BUCKET}/run", env)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed from step {stopped}" in err
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    with open(os.path.join(local, "metrics.jsonl")) as f:
        expected = losses_from(f.read())
    logged = losses_from(bucket.blob("run/metrics.jsonl").download_as_text())
    return expected, logged, stopped


def test_a_run_in_a_bucket_resumes_exactly_after_sigterm(bucket_run, gcs):
    expected, logged, stopped = bucket_run
    _, bucket = gcs
    # Every step's metrics are in the bucket: the resumed run continued the stopped run's file.
    assert sorted(logged) == list(range(1, 41))
    for step in range(stopped + 1, 41):
        np.testing.assert_allclose(logged[step], expected[step], rtol=1e-5)
    files = names(bucket, "run/")
    assert "run/config.json" in files
    assert any(n.startswith("run/events.out.tfevents.") for n in files)  # TensorBoard
    assert committed_steps(bucket, "run")[-1] == 40
    assert not os.path.exists(os.path.join(ROOT, "gs:"))  # nothing went to a local "gs:" folder


def test_tokenize_reads_the_model_and_writes_its_outputs_in_the_bucket(bucket_run, gcs,
                                                                        tmp_path):
    env, bucket = gcs
    clip = np.random.default_rng(0).integers(0, 256, (1, 11, 32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, clip)
    bucket.blob("inputs/clip.npy").upload_from_string(buf.getvalue())
    run_cli("tokenize", f"--workdir=gs://{BUCKET}/run", f"--input=gs://{BUCKET}/inputs/clip.npy",
            f"--output=gs://{BUCKET}/out/recon.npy", f"--tokens=gs://{BUCKET}/out/tokens.npy",
            env=env, check=True)
    # The same checkpoint copied to disk by the client library gives the same outputs.
    local = tmp_path / "run"
    for name in names(bucket, "run/checkpoints/"):
        target = local / name[len("run/"):]
        target.parent.mkdir(parents=True, exist_ok=True)
        bucket.blob(name).download_to_filename(str(target))
    np.save(tmp_path / "clip.npy", clip)
    run_cli("tokenize", f"--workdir={local}", f"--input={tmp_path / 'clip.npy'}",
            f"--output={tmp_path / 'recon.npy'}", f"--tokens={tmp_path / 'tokens.npy'}",
            check=True)
    for name in ("recon", "tokens"):
        remote = np.load(io.BytesIO(bucket.blob(f"out/{name}.npy").download_as_bytes()))
        np.testing.assert_array_equal(remote, np.load(tmp_path / f"{name}.npy"))


def test_story_reads_the_transformer_from_the_bucket(micro_transformer_dir, gcs, tmp_path):
    env, bucket = gcs
    for root, _, files in os.walk(os.path.join(micro_transformer_dir, "checkpoints")):
        for file in files:
            path = os.path.join(root, file)
            name = "transformer/" + os.path.relpath(path, micro_transformer_dir)
            bucket.blob(name).upload_from_filename(path)
    prompts = "a red square moves right\na blue circle moves down\n"
    bucket.blob("inputs/prompts.txt").upload_from_string(prompts)
    (tmp_path / "p.txt").write_text(prompts)
    run_cli("story", f"--workdir=gs://{BUCKET}/transformer",
            f"--prompts_file=gs://{BUCKET}/inputs/prompts.txt",
            f"--output=gs://{BUCKET}/stories/s.mp4", "--seed=2", env=env, check=True)
    run_cli("story", f"--workdir={micro_transformer_dir}", f"--prompts_file={tmp_path / 'p.txt'}",
            f"--output={tmp_path / 's.mp4'}", "--seed=2", check=True)
    assert names(bucket, "stories/") == ["stories/s.ids.npy", "stories/s.json", "stories/s.mp4",
                                         "stories/s.npy"]
    remote = np.load(io.BytesIO(bucket.blob("stories/s.npy").download_as_bytes()))
    np.testing.assert_array_equal(remote, np.load(tmp_path / "s.npy"))


def test_a_missing_bucket_is_one_line_and_nothing_is_written(gcs, tmp_path):
    env, bucket = gcs
    before = names(bucket, "")
    proc = run_cli("train", *RUN, "--workdir=gs://no-such-bucket/run", env=env)
    assert_one_line_error(proc, "bucket gs://no-such-bucket does not exist")
    assert names(bucket, "") == before
    assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_an_unreachable_endpoint_fails_fast_with_one_line():
    closed = _free_port()  # nothing listens there
    start = time.time()
    proc = run_cli("train", *RUN, "--workdir=gs://bucket/run",
                   env={"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{closed}",
                        "PHENAKI_STORAGE_TIMEOUT_S": "3"})
    assert_one_line_error(proc, "cannot reach gs://bucket", f"127.0.0.1:{closed}")
    assert time.time() - start < 60


def test_embed_reads_a_t5_from_the_bucket_and_writes_a_sharded_cache_there(gcs, tmp_path):
    from t5_reference import random_params, tiny_config, to_hf, train_spiece, write_hf

    env, bucket = gcs
    local = tmp_path / "t5"
    write_hf(str(local), to_hf(random_params(tiny_config(), seed=3), tiny_config()))
    train_spiece(str(local))
    for file in sorted(os.listdir(local)):
        bucket.blob(f"t5/{file}").upload_from_filename(str(local / file))
    prompts = "a red square moves up\na blue circle\na green triangle moves left\n"
    bucket.blob("inputs/captions.txt").upload_from_string(prompts)
    (tmp_path / "captions.txt").write_text(prompts)
    run_cli("embed", f"--checkpoint=gs://{BUCKET}/t5",
            f"--prompts_file=gs://{BUCKET}/inputs/captions.txt",
            f"--output=gs://{BUCKET}/caches/captions", "--shards=2", "--max_length=8",
            env={**env, "HOME": str(tmp_path / "home")}, check=True)
    run_cli("embed", f"--checkpoint={local}", f"--prompts_file={tmp_path / 'captions.txt'}",
            f"--output={tmp_path / 'local.npz'}", "--max_length=8", check=True)
    assert names(bucket, "caches/") == ["caches/captions/cache.json",
                                        "caches/captions/shard-00000.npz",
                                        "caches/captions/shard-00001.npz"]
    with np.load(tmp_path / "local.npz") as npz:
        expected = {str(p): e for p, e in zip(npz["prompts"], npz["embeddings"], strict=True)}
    for k in range(2):
        blob = bucket.blob(f"caches/captions/shard-0000{k}.npz").download_as_bytes()
        with np.load(io.BytesIO(blob)) as npz:
            for p, e in zip(npz["prompts"], npz["embeddings"], strict=True):
                np.testing.assert_allclose(e, expected.pop(str(p)), rtol=1e-5, atol=1e-6)
    assert not expected  # every caption is in exactly one shard


def test_prepare_writes_into_the_bucket_and_training_reads_from_it(gcs, tmp_path):
    # phenaki-prepare (its command, Beam in one process) writes a prepared set into the bucket;
    # the input pipeline reads it from there and yields what the same set read locally does.
    from conftest import load_config

    from phenaki_jax.data import pipeline
    from tests import real_media as rm

    env, bucket = gcs
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": rm.clip_path("carphone_pristine.mp4"),
                                    "text": "a man talks in a car"}) + "\n")
    args = [f"--input={manifest}", "--resolution=32", "--direct_running_mode=in_memory",
            "--direct_num_workers=1"]
    run_cli("cli.prepare", *args, f"--output=gs://{BUCKET}/prepared", env=env, check=True)
    run_cli("cli.prepare", *args, f"--output={tmp_path / 'local'}", check=True)
    assert "prepared/dataset.json" in names(bucket, "prepared/")
    batches = {}
    for where in (f"gs://{BUCKET}/prepared", str(tmp_path / "local")):
        c = load_config("cvivit")
        c.data.name, c.data.resolution, c.batch_size = f"prepared:{where}", 32, 2
        c.data.image_batch_size = 0
        batches[where] = next(pipeline.host_batches(c, "train", start_batch=1))
    remote, local = batches.values()
    np.testing.assert_array_equal(remote["frames"], local["frames"])
    assert list(remote["text"]) == list(local["text"]) == [b"a man talks in a car"] * 2
