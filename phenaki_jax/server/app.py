"""The story editor's HTTP side (FastAPI): the page, a JSON API and the story files.

    GET  /                        the editor page
    GET  /api/info                the model's sampling defaults and sizes
    GET  /api/stories             every story written, newest first
    GET  /api/stories/{id}        one story's segments and settings
    POST /api/stories             multipart form: prompts (one per line), seed, sampling
                                  fields, optionally image or video (a file), or parent and
                                  from_segment to regenerate an earlier story from a segment;
                                  202 with the queued job
    GET  /api/jobs/{id}           a job's state and segments done
    GET  /files/{id}.{mp4,gif,npy,json}

Every bad request is a 4xx whose JSON `detail` says what was wrong. Uploads are read up to the
size limit and no further, decoded before they are queued, and stored under names made here.
"""

from __future__ import annotations

import importlib.resources
import os
import uuid
from typing import Any

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from phenaki_jax.data import media
from phenaki_jax.data.features import FPS
from phenaki_jax.server.service import RequestError, StoryRequest, StoryService, parse_prompts

SAMPLING_FIELDS = {"guidance_scale": float, "num_steps": int, "temperature": float,
                   "choice_temperature": float, "refine_sweeps": int, "time_bias": float,
                   "candidates": int, "candidate_guidance": float}
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
MEDIA_TYPES = {"mp4": "video/mp4", "gif": "image/gif", "npy": "application/octet-stream",
               "json": "application/json"}
_CHUNK = 1 << 20


def _page() -> str:
    return importlib.resources.files("phenaki_jax.server").joinpath("page.html").read_text(
        encoding="utf-8")


async def _read_limited(upload: UploadFile, field: str, limit: int) -> bytes:
    """The upload's bytes; 413 as soon as it passes `limit`, without reading the rest."""
    data = bytearray()
    while chunk := await upload.read(_CHUNK):
        data += chunk
        if len(data) > limit:
            raise RequestError(f"{field}: the upload is larger than the limit of "
                               f"{limit / 2**20:g} MiB", 413)
    if not data:
        raise RequestError(f"{field}: the upload is empty", 400)
    return bytes(data)


def _number(form: Any, name: str, kind: type, default: Any = None) -> Any:  # noqa: ANN401
    raw = form.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if not isinstance(raw, str):
        raise RequestError(f"{name}: expected a number, got a file")
    try:
        return kind(raw.strip())
    except ValueError:
        raise RequestError(f"{name}: expected {'an integer' if kind is int else 'a number'}, "
                           f"got {raw[:40]!r}") from None


def create_app(service: StoryService, max_upload_bytes: int = 32 << 20) -> FastAPI:
    app = FastAPI(title="phenaki story editor", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(RequestError)
    async def refused(_: Request, e: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"},
                            status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page()

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {**service.info(), "max_upload_bytes": max_upload_bytes}

    @app.get("/api/stories")
    def stories() -> list[dict[str, Any]]:
        return service.stories()

    @app.get("/api/stories/{story_id}")
    def story(story_id: str) -> dict[str, Any]:
        return service.story(story_id)

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return service.job(job_id).as_dict()

    @app.get("/files/{name}")
    def file(name: str) -> FileResponse:
        stem, _, kind = name.rpartition(".")
        path = service.file(stem, kind)
        return FileResponse(path, media_type=MEDIA_TYPES[kind],
                            filename=f"{stem}.{kind}" if kind in ("mp4", "gif") else None)

    @app.post("/api/stories", status_code=202)
    async def create(request: Request) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith(
                ("multipart/form-data", "application/x-www-form-urlencoded")):
            raise RequestError("send the story as a form (multipart/form-data)", 415)
        # The length is checked before anything is read: an upload over the limit is refused
        # without being received.
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            raise RequestError("the request needs a Content-Length header", 411)
        if int(length) > max_upload_bytes + (1 << 20):
            raise RequestError(f"the request is larger than the upload limit of "
                               f"{max_upload_bytes / 2**20:g} MiB", 413)
        async with request.form(max_files=2, max_fields=32, max_part_size=1 << 20) as form:
            return (await _submit(service, form, max_upload_bytes)).as_dict()

    return app


async def _submit(service: StoryService, form: Any, limit: int) -> Any:  # noqa: ANN401
    prompts = form.get("prompts")
    if not isinstance(prompts, str):
        raise RequestError("prompts: required, one prompt per line")
    seed = _number(form, "seed", int, 0)
    if not 0 <= seed < 2**31:
        raise RequestError(f"seed: must be in [0, 2^31), got {seed}")
    sampling = {k: v for k, kind in SAMPLING_FIELDS.items()
                if (v := _number(form, k, kind)) is not None}
    parent = form.get("parent") or None
    if parent is not None and not isinstance(parent, str):
        raise RequestError("parent: expected a story id")
    request = StoryRequest(parse_prompts(prompts), seed, sampling, parent=parent,
                           from_segment=_number(form, "from_segment", int))
    if parent is None and request.from_segment is not None:
        raise RequestError("from_segment: needs parent, the story to regenerate")
    uploads = {}
    for field in ("image", "video"):
        upload = form.get(field)
        if upload is None or isinstance(upload, str) and not upload:
            continue
        if isinstance(upload, str):
            raise RequestError(f"{field}: expected a file upload")
        if parent is not None:
            raise RequestError(f"{field}: a regenerated story keeps its parent's start; "
                               "upload with a new story instead", 400)
        uploads[field] = (await _read_limited(upload, field, limit), upload.filename or "")
    if len(uploads) > 1:
        raise RequestError("give an image or a video, not both", 400)
    service.check(request)
    stored = []
    try:
        for field, (data, filename) in uploads.items():
            stored.append(_store_upload(service, field, data, filename))
            setattr(request, field, stored[-1])
        return service.submit(request)
    except BaseException:
        for path in stored:  # a refused request leaves no file behind
            if os.path.exists(path):
                os.remove(path)
        raise


def _store_upload(service: StoryService, field: str, data: bytes, filename: str) -> str:
    """Decodes the upload as the job will (a bad one is a 400 now, not a failed job later) and
    stores it under a name made here."""
    from PIL import Image

    name = uuid.uuid4().hex
    if field == "image":
        try:
            frame = media.read_image(data, name="image upload")
        except Exception as e:  # noqa: BLE001 - whatever the decoder says of hostile bytes
            raise RequestError("image: the upload is not a readable image", 400) from e
        path = os.path.join(service.uploads_dir, name + ".png")
        Image.fromarray(frame).save(path)
        return path
    ext = os.path.splitext(filename)[1].lower()
    if ext not in VIDEO_EXTENSIONS:
        raise RequestError(f"video: the file name must end in one of "
                           f"{', '.join(VIDEO_EXTENSIONS)}, got {filename[:60]!r}", 400)
    path = os.path.join(service.uploads_dir, name + ext)
    with open(path, "wb") as f:
        f.write(data)
    k = service.decoder.cond_frames
    try:
        frames = media.read_video(path, fps=FPS).shape[0]
    except Exception as e:  # noqa: BLE001 - as above
        os.remove(path)
        raise RequestError("video: the upload is not a readable video", 400) from e
    if frames < k:
        os.remove(path)
        raise RequestError(f"video: the upload has {frames} frames at {FPS} fps; continuing "
                           f"it needs at least {k}", 400)
    return path
