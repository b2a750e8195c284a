"""phenaki-serve, the story editor, for real: the command serving the micro models, a headless
Debian chromium driven by Playwright (the system browser; nothing is downloaded), and the HTTP
API as any client sees it: bad requests, uploads, and users at the same time.

`PHENAKI_EDITOR_SCREENSHOT=PATH` keeps the browser's screenshot of the page (the README's).
"""

import concurrent.futures
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from conftest import ROOT, subprocess_env

from phenaki_jax.data import media
from phenaki_jax.metrics import psnr_per_clip

CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by `make install`
PROMPTS = ["a red square moves right", "a green square moves down", "a blue square moves left"]
EDITED = "a yellow circle moves up"


@pytest.fixture(scope="module")
def server(micro_transformer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("editor")
    proc = subprocess.Popen(
        [sys.executable, "-m", "phenaki_jax.serve", f"--workdir={micro_transformer_dir}",
         f"--output_dir={out}", "--port=0", "--max_upload_mb=1", "--max_queued=6"],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    lines: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # the server's stderr, kept for failures and never left to fill
        for line in proc.stderr:
            lines.append(line)
            if "the story editor is at" in line:
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    ready.wait(300)
    match = re.search(r"(http://127\.0\.0\.1:\d+/)", "".join(lines))
    assert match and proc.poll() is None, "".join(lines)[-3000:]
    yield types.SimpleNamespace(url=match.group(1), out=out, log=lines)
    proc.terminate()
    proc.wait(30)


def request(server, path, data=None, headers=None, method=None):
    """(status, parsed JSON or raw bytes) of one HTTP request; 4xx and 5xx are returned."""
    req = urllib.request.Request(server.url + path.lstrip("/"), data=data,
                                 headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, body, kind = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, body, kind = e.code, e.read(), e.headers.get("content-type", "")
    return status, json.loads(body) if kind.startswith("application/json") else body


def form(fields, files=()):
    """A multipart/form-data body and its headers; files: (field, filename, bytes)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for name, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def submit(server, fields, files=()):
    body, headers = form(fields, files)
    return request(server, "/api/stories", body, headers)


def finish(server, job, timeout=240):
    deadline = time.time() + timeout
    while job["state"] not in ("done", "failed"):
        assert time.time() < deadline, job
        time.sleep(0.2)
        status, job = request(server, f"/api/jobs/{job['id']}")
        assert status == 200
    return job


def frames_of(server, story):
    return np.load(os.path.join(server.out, "stories", f"{story}.npy"))


def test_the_editor_generates_edits_and_downloads_in_a_real_browser(server, tmp_path):
    """Type prompts, generate, see the video play, edit segment 2 and regenerate from it:
    segment 1's frames stay bit-identical and the rest equal a whole new story with the edited
    prompts; the downloaded mp4 is the story's frames."""
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: run `make install`"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 760}, accept_downloads=True)
        page.goto(server.url)
        page.wait_for_function("document.getElementById('guidance_scale').value !== ''")
        page.fill("#prompts", "\n".join(PROMPTS))
        page.fill("#seed", "5")
        page.click("#generate")
        page.wait_for_selector(".segment[data-index='2']", timeout=240_000)
        first = page.get_attribute("#player", "data-story")
        # The page's video element decodes and plays frames: its clock advances and new
        # frames reach the screen.
        played = page.evaluate("""() => new Promise((resolve) => {
            const v = document.getElementById('player'); const times = new Set();
            const seen = (now, meta) => { times.add(meta.mediaTime);
                if (times.size >= 3) resolve([times.size, v.videoWidth, v.currentTime]);
                else v.requestVideoFrameCallback(seen); };
            v.requestVideoFrameCallback(seen); v.play();
            setTimeout(() => resolve([times.size, v.videoWidth, v.currentTime]), 10000);
        })""")
        assert played[0] >= 3 and played[1] == 32 and played[2] > 0, played
        page.fill(".segment[data-index='1'] .segment-prompt", EDITED)
        page.click(".segment[data-index='1'] .regenerate")
        page.wait_for_function(
            f"document.getElementById('player').dataset.story !== '{first}' && "
            "document.querySelectorAll('.segment').length === 3", timeout=240_000)
        second = page.get_attribute("#player", "data-story")
        assert page.locator("#history li").count() >= 2  # the first result is still listed
        assert page.input_value(".segment[data-index='1'] .segment-prompt") == EDITED
        with page.expect_download() as download:
            page.click("#download-mp4")
        mp4 = str(tmp_path / "download.mp4")
        download.value.save_as(mp4)
        shot = str(tmp_path / "editor.png")
        page.screenshot(path=shot)
        browser.close()
    if os.environ.get("PHENAKI_EDITOR_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["PHENAKI_EDITOR_SCREENSHOT"])

    a, b = frames_of(server, first), frames_of(server, second)
    status, manifest = request(server, f"/api/stories/{second}")
    assert status == 200 and manifest["parent"] == first and manifest["from_segment"] == 1
    assert [s["prompt"] for s in manifest["segments"]] == [PROMPTS[0], EDITED, PROMPTS[2]]
    assert a.shape == b.shape == (23, 32, 32, 3)
    assert (b[:11] == a[:11]).all()  # segment 1, bit for bit
    assert not (b[11:17] == a[11:17]).all()  # segment 2 follows the edited prompt
    # Segment 1 was kept, not generated again: its recorded time is the parent's.
    def timing(story):
        with open(os.path.join(server.out, "stories", f"{story}.json")) as f:
            return json.load(f)["seconds_per_prompt"]

    assert timing(second)[0] == timing(first)[0]
    # The rest is exactly what a whole story with the edited prompts gives.
    status, job = submit(server, {"prompts": "\n".join([PROMPTS[0], EDITED, PROMPTS[2]]),
                                  "seed": "5"})
    assert status == 202
    assert (frames_of(server, finish(server, job)["story"]) == b).all()
    # The download is the story: its frames, as H.264 keeps them.
    played_back = media.read_video(mp4, fps=None)
    assert played_back.shape == b.shape
    assert float(psnr_per_clip(played_back[None], b[None])[0]) > 30


def _png(size):
    import io

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_uploads_become_frame_zero_or_the_continued_context(server, tmp_path):
    """An uploaded image is the first frame's start; an uploaded video's last K = 5 frames are
    re-encoded as frames 0 .. 4 and one prompt adds 6."""
    clip = np.random.default_rng(1).integers(0, 255, (8, 48, 64, 3), dtype=np.uint8)
    path = str(tmp_path / "clip.mp4")
    media.write_video(path, clip)
    with open(path, "rb") as f:
        video = f.read()
    status, job = submit(server, {"prompts": PROMPTS[0], "seed": "1"},
                         [("video", "mine.mp4", video)])
    assert status == 202, job
    status, image_job = submit(server, {"prompts": PROMPTS[1]}, [("image", "x.png", _png(40))])
    assert status == 202, image_job
    story = finish(server, job)["story"]
    assert finish(server, image_job)["state"] == "done"
    frames = frames_of(server, story)
    assert frames.shape == (11, 32, 32, 3)
    status, manifest = request(server, f"/api/stories/{story}")
    assert [(s["start_frame"], s["end_frame"]) for s in manifest["segments"]] == [(5, 11)]
    uploads = os.listdir(os.path.join(server.out, "uploads"))
    assert len(uploads) == 2 and "mine.mp4" not in uploads  # stored under names it made
    # The gif download is made from the exact frames when first asked for.
    status, gif = request(server, f"/files/{story}.gif")
    assert status == 200
    gif_path = tmp_path / "story.gif"
    gif_path.write_bytes(gif)
    from PIL import Image, ImageSequence

    with Image.open(gif_path) as im:
        played = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
    assert played.shape == frames.shape
    assert float(psnr_per_clip(played[None], frames[None])[0]) > 25  # a 256-colour palette


def test_bad_requests_get_a_4xx_that_says_why_and_write_nothing(server, tmp_path):
    stories = os.path.join(server.out, "stories")
    before = {d: sorted(os.listdir(os.path.join(server.out, d))) for d in ("stories",
                                                                           "uploads")}
    short = str(tmp_path / "short.mp4")
    media.write_video(short, np.zeros((3, 32, 32, 3), np.uint8))
    with open(short, "rb") as f:
        short_video = f.read()
    media.write_video(short, np.zeros((9, 32, 32, 3), np.uint8))
    with open(short, "rb") as f:
        video = f.read()
    cases = [
        ({"prompts": "  \n "}, (), 422, "prompts: give at least one prompt"),
        ({"prompts": "a", "seed": "x"}, (), 422, "seed: expected an integer"),
        ({"prompts": "a", "seed": "-1"}, (), 422, "seed: must be in"),
        ({"prompts": "a", "guidance_scale": "lots"}, (), 422, "guidance_scale: expected a"),
        ({"prompts": "a", "num_steps": "100000"}, (), 422, "num_steps: must be in [0, 64]"),
        ({"prompts": "a", "num_steps": "0"}, (), 422, "num_steps"),
        ({"prompts": "a", "candidates": "9"}, (), 422, "candidates: must be in [0, 8]"),
        ({"prompts": "a", "candidates": "0"}, (), 422, "candidates must be an integer >= 1"),
        ({"prompts": "a", "candidate_guidance": "-1"}, (), 422, "candidate_guidance must be"),
        ({"prompts": "a"}, [("image", "x.png", b"not an image")], 400,
         "image: the upload is not a readable image"),
        ({"prompts": "a"}, [("image", "big.png", b"\0" * (1 << 20) + b"\0")], 413,
         "larger than the limit of 1 MiB"),
        ({"prompts": "a"}, [("video", "x.mp4", b"\0" * 5000)], 400,
         "video: the upload is not a readable video"),
        ({"prompts": "a"}, [("video", "s.mp4", short_video)], 400, "has 3 frames at 8 fps"),
        ({"prompts": "a"}, [("video", "s.exe", short_video)], 400, "file name must end in"),
        ({"prompts": "a"}, [("image", "x.png", _png(8)), ("video", "s.mp4", video)], 400,
         "not both"),
        ({"prompts": "a", "num_steps": "0"}, [("image", "x.png", _png(8))], 422,
         "num_steps"),
        ({"prompts": "a\nb", "parent": "s9999-0000abcd", "from_segment": "1"}, (), 404,
         "story s9999-0000abcd does not exist"),
        ({"prompts": "a", "parent": "../../etc", "from_segment": "1"}, (), 404,
         "does not exist"),
        ({"prompts": "a", "from_segment": "1"}, (), 422, "from_segment: needs parent"),
    ]
    for fields, files, status, needle in cases:
        got, body = submit(server, fields, files)
        assert (got, needle in body.get("detail", "")) == (status, True), (fields, got, body)
    # Over the limit by its Content-Length: answered before any of the body is sent (a client
    # that sent the body first could find the connection closed under it).
    host, port = re.match(r"http://([^:]+):(\d+)/", server.url).groups()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/api/stories")
    conn.putheader("Content-Type", "multipart/form-data; boundary=b")
    conn.putheader("Content-Length", str(3 << 20))
    conn.endheaders()
    response = conn.getresponse()
    got, body = response.status, json.loads(response.read())
    conn.close()
    assert got == 413 and "larger than the upload limit" in body["detail"]
    got, body = request(server, "/api/stories", b'{"prompts": "a"}',
                        {"Content-Type": "application/json"})
    assert got == 415 and "form" in body["detail"]
    for path in ("/files/..%2F..%2Fetc%2Fpasswd", "/files/%2Fetc%2Fpasswd.json",
                 "/files/s0001-0000abcd.py", "/files/s0001-0000abcd.mp4", "/api/jobs/nope",
                 "/api/stories/..%2Fstories"):
        got, body = request(server, path)
        assert got == 404 and "detail" in body, (path, got)
    after = {d: sorted(os.listdir(os.path.join(server.out, d))) for d in ("stories",
                                                                          "uploads")}
    assert after == before, "a refused request wrote a file"
    assert sorted(os.listdir(server.out)) == ["stories", "uploads"]
    assert os.path.isdir(stories)


def test_concurrent_users_neither_crash_the_server_nor_mix_their_stories(server):
    """Five users at once, two of them asking for the same story: all are served in turn, the
    twins get identical frames, and a request past the queue's bound is a 429."""
    asks = [("4", PROMPTS[:2]), ("6", PROMPTS[1:]), ("4", PROMPTS[:2]), ("7", PROMPTS[:1]),
            ("8", PROMPTS)]

    def user(ask):
        seed, prompts = ask
        status, job = submit(server, {"prompts": "\n".join(prompts), "seed": seed})
        assert status == 202, job
        return finish(server, job)

    with concurrent.futures.ThreadPoolExecutor(len(asks)) as pool:
        jobs = list(pool.map(user, asks))
    assert [j["state"] for j in jobs] == ["done"] * len(asks)
    assert len({j["story"] for j in jobs}) == len(asks)
    frames = [frames_of(server, j["story"]) for j in jobs]
    assert (frames[0] == frames[2]).all()
    assert [f.shape[0] for f in frames] == [17, 17, 17, 11, 23]
    assert not (frames[0] == frames[1]).all()
    # Past the queue's bound (6 waiting), the next is refused until one is done.
    bodies = [submit(server, {"prompts": "\n".join(PROMPTS * 4), "seed": str(s)})
              for s in range(7)]
    assert [s for s, _ in bodies].count(429) >= 1
    assert "queue is full" in next(b["detail"] for s, b in bodies if s == 429)
    for status, job in bodies:
        if status == 202:
            assert finish(server, job)["state"] == "done"
