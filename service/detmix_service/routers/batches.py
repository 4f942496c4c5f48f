"""Mixed batches: ``POST /v1/mix`` (the client's images) and ``POST /v1/datasets/{name}/batch``.

Both read the body first, under the request's deadline and a minimum pace, holding one of
``max_uploads`` upload places (429 at once when none is free); then admit the batch (429 at once
when ``max_in_flight`` batches are in flight) and do all image work, parsing and JSON encoding
included, in a worker thread (see :mod:`detmix_service.runtime`). Slow senders thus never hold a
batch's place.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Request, Response
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive

from detmix_service.cocoio import Limits, decode_base64
from detmix_service.deps import ApiKeyChecked, RuntimeDep
from detmix_service.errors import DeadlineExceeded, InsufficientStorage, InvalidInput, NotFound, UnsupportedMediaType
from detmix_service.jobs import Answer, Blob, JobContext, parse_json, parse_model, run_dataset_batch, run_mix
from detmix_service.runtime import Runtime, UploadPace, run_job
from detmix_service.schemas import DatasetBatchRequest, ErrorResponse, MixRequest, MixResponse

__all__ = ["limits_of", "router"]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


BATCH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("API key missing or wrong"),
    408: _error("the body came slower than min_upload_bytes_per_s"),
    413: _error("body over max_body_bytes"),
    422: _error("invalid input; 'loc' names the field, the message the image or annotation"),
    429: _error("max_uploads bodies are being received or max_in_flight batches are in flight; retry after "
                "Retry-After seconds"),
    503: _error("the server is shutting down and the request was not done within its graceful shutdown"),
    504: _error("not done within request_timeout_s"),
}

router = APIRouter(prefix="/v1", tags=["batches"], dependencies=[ApiKeyChecked], responses=BATCH_ERRORS)

MIX_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/MixRequest"}},
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/MixUpload"}},
    },
}
DATASET_BATCH_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DatasetBatchRequest"}}},
}
#: The multipart form of ``POST /v1/mix`` (added to the OpenAPI components by the app).
MIX_UPLOAD_SCHEMA = {
    "title": "MixUpload",
    "type": "object",
    "required": ["request"],
    "properties": {
        "request": {
            "type": "string",
            "description": "a MixRequest as JSON, whose images name their file part by file_name and carry no data",
        },
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "the image files"},
    },
}


UNBOUNDED = 2**62


def limits_of(runtime: Runtime) -> Limits:
    s = runtime.settings
    # Without max_mask_pixels the memory budget bounds the masks (with everything else).
    mask_pixels = UNBOUNDED if s.max_mask_pixels is None else s.max_mask_pixels
    return Limits(s.max_batch_images, s.max_image_pixels, s.max_batch_pixels, s.max_annotations_per_image,
                  mask_pixels, s.max_batch_memory_bytes)


def _answer(runtime: Runtime, answer: Answer) -> Response:
    for mode in answer.modes:
        runtime.metrics.images_mixed.labels(mode).inc()
    return Response(answer.body, media_type="application/json")


async def _run(runtime: Runtime, request: Request, deadline: float, job: Callable[[JobContext], Answer]) -> Response:
    """Admit the batch (its body is in) and run ``job`` in a worker thread by ``deadline``."""

    def with_context(checkpoint: Callable[[], None]) -> Answer:
        return job(JobContext(limits_of(runtime), runtime.recipes, checkpoint))

    with runtime.admission.admitted(runtime.settings.retry_after_s) as ticket:
        return _answer(runtime, await run_job(runtime, ticket, with_context, request, deadline))


def _paced(request: Request, runtime: Runtime) -> UploadPace:
    settings = runtime.settings
    return UploadPace(request.receive, settings.min_upload_bytes_per_s, settings.upload_grace_s)


def _deadline_passed(runtime: Runtime) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"the body did not arrive within the deadline of {runtime.settings.request_timeout_s:g} s"
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _unsupported(media_type: str, accepted: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(f"Content-Type must be {accepted}, got {media_type or 'none'!r}",
                                ["header", "content-type"])


async def _json_body(request: Request, runtime: Runtime, deadline: float) -> bytes:
    """The body of a JSON request, read by ``deadline``."""
    media_type = _media_type(request)
    if media_type != "application/json":
        raise _unsupported(media_type, "application/json")
    body = None
    with runtime.uploads.receiving(runtime.settings.retry_after_s):
        with anyio.move_on_after(deadline - anyio.current_time()):
            body = await Request(request.scope, _paced(request, runtime).receive).body()
    if body is None:
        raise _deadline_passed(runtime)
    return body


def _json_job(body: bytes, ctx: JobContext) -> Answer:
    request = parse_model(MixRequest, parse_json(body, ["body"], ctx.limits.memory_budget), ["body"])
    blobs = []
    for k, image in enumerate(request.images):
        loc = ("body", "images", k, "data")
        if image.data is None:
            raise InvalidInput(f"image {image.id}: a JSON request carries each image as base64 in 'data'", loc)
        blobs.append(Blob(decode_base64(image.data, loc, f"image {image.id}"), loc))
    return run_mix(request, blobs, ctx, ["body"], ["body", "images"])


def _multipart_job(form: FormData, ctx: JobContext) -> Answer:
    text = form.get("request")
    if not isinstance(text, str):
        why = "is missing" if text is None else "must be a text field, not a file"
        raise InvalidInput(f"the form field 'request' (the MixRequest JSON) {why}", ["body", "request"])
    raw = parse_json(text.encode("utf-8"), ["body", "request"], ctx.limits.memory_budget)
    request = parse_model(MixRequest, raw, ["body", "request"])
    files: dict[str, tuple[int, UploadFile]] = {}
    for k, part in enumerate(form.getlist("images")):
        if not isinstance(part, UploadFile) or not part.filename:
            raise InvalidInput("every 'images' part must be a file with a filename", ["body", "images", k])
        if part.filename in files:
            raise InvalidInput(f"two file parts are named {part.filename!r}", ["body", "images", k])
        files[part.filename] = (k, part)
    unknown = sorted(set(form.keys()) - {"request", "images"})
    if unknown:
        raise InvalidInput(f"unknown form fields {unknown}; send 'request' and 'images'", ["body", unknown[0]])
    blobs, used = [], set()
    for k, image in enumerate(request.images):
        loc = ("body", "request", "images", k)
        if image.data is not None:
            raise InvalidInput(f"image {image.id}: in a multipart request the file part holds the image, not 'data'",
                               (*loc, "data"))
        if image.file_name not in files:
            raise InvalidInput(f"image {image.id}: no file part is named {image.file_name!r}", (*loc, "file_name"))
        index, part = files[image.file_name]
        used.add(image.file_name)
        part.file.seek(0)
        blobs.append(Blob(part.file.read(), ("body", "images", index)))
    unused = sorted(set(files) - used)
    if unused:
        raise InvalidInput(f"file parts {unused} are not named by any image's file_name", ["body", "images"])
    return run_mix(request, blobs, ctx, ["body", "request"], ["body", "images"])


class _ClosingDelimiter:
    """Watches a multipart body stream for its closing delimiter ``--boundary--``: a body cut
    before it parses as a form with parts missing, which would be reported as the client's
    missing part instead of the cut. Holds only the last few bytes."""

    def __init__(self, receive: Receive, content_type: str) -> None:
        boundary = content_type.partition("boundary=")[2].split(";")[0].strip().strip('"').encode("latin-1")
        self._receive = receive
        self.delimiter = b"--" + boundary + b"--"
        self.seen = False
        self._tail = b""

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and not self.seen:
            data = self._tail + message.get("body", b"")
            self.seen = self.delimiter in data
            self._tail = data[-len(self.delimiter):]
        return message


def _spool_error(error: OSError) -> InsufficientStorage:
    return InsufficientStorage(
        f"the server has no room left to spool the upload ({errno.errorcode.get(error.errno, error.errno)}: "
        f"{error.strerror}); nothing of it was kept, retry later or send a smaller body",
        ["body"],
    )


@router.post(
    "/mix",
    summary="Mix a COCO batch sent by the client",
    description=(
        "JSON (images as base64 in `images[].data`) or multipart (`request`: the same JSON without `data`, "
        "`images`: one file part per image, named by `images[].file_name`). Each image is mixed with a partner "
        "from the same batch (a seeded cyclic pairing); the answer carries the parameters to replay the call."
    ),
    response_model=None,
    responses={200: {"model": MixResponse, "description": "the mixed batch"},
               415: _error("not JSON or multipart, or an image that is not JPEG, PNG or WebP"),
               507: _error("no room left on the server to spool the multipart upload")},
    openapi_extra={"requestBody": MIX_BODY},
)
async def mix(request: Request, runtime: RuntimeDep) -> Response:
    deadline = anyio.current_time() + runtime.settings.request_timeout_s
    media_type = _media_type(request)
    if media_type == "application/json":
        body = await _json_body(request, runtime, deadline)
        return await _run(runtime, request, deadline, partial(_json_job, body))
    if media_type == "multipart/form-data":
        settings = runtime.settings
        form = None
        closing = _ClosingDelimiter(_paced(request, runtime).receive, request.headers.get("content-type", ""))
        try:
            remaining = deadline - anyio.current_time()
            with runtime.uploads.receiving(settings.retry_after_s), anyio.move_on_after(remaining):
                try:
                    form = await Request(request.scope, closing.receive).form(
                        max_files=settings.max_batch_images, max_fields=16, max_part_size=settings.max_body_bytes)
                except StarletteHTTPException as error:  # starlette's "malformed form" 400
                    raise InvalidInput(f"the multipart body cannot be read: {error.detail}", ["body"],
                                       type="multipart") from None
                except OSError as error:  # spooling a part to TMPDIR failed (ENOSPC, EFBIG, EDQUOT...)
                    raise _spool_error(error) from None
            if form is None:
                raise _deadline_passed(runtime)
            if not closing.seen:
                raise InvalidInput(
                    f"the multipart body ends before its closing delimiter {closing.delimiter.decode('latin-1')!r}: it "
                    "was cut short", ["body"], type="multipart")
            return await _run(runtime, request, deadline, partial(_multipart_job, form))
        finally:
            if form is not None:
                await form.close()  # the spooled files go now, whatever happened
    raise _unsupported(media_type, "application/json or multipart/form-data")


@router.post(
    "/datasets/{name}/batch",
    summary="Draw a batch from a server-side dataset and mix it",
    description=(
        "`batch_size` images are drawn without replacement with `numpy.random.default_rng(seed)` (or `image_ids` "
        "are taken as given), then paired and mixed with the same generator, as `POST /v1/mix` does."
    ),
    response_model=None,
    responses={200: {"model": MixResponse, "description": "the mixed batch"}, 404: _error("no such dataset"),
               415: _error("not JSON")},
    openapi_extra={"requestBody": DATASET_BATCH_BODY},
)
async def dataset_batch(
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="a name from GET /v1/datasets")],
    request: Request,
    runtime: RuntimeDep,
) -> Response:
    dataset = runtime.datasets.get(name)
    if dataset is None:
        raise NotFound(f"dataset {name!r} is not one of {sorted(runtime.datasets)}", ["path", "name"])
    deadline = anyio.current_time() + runtime.settings.request_timeout_s
    body = await _json_body(request, runtime, deadline)

    def job(ctx: JobContext) -> Answer:
        options = parse_model(DatasetBatchRequest, parse_json(body, ["body"], ctx.limits.memory_budget), ["body"])
        return run_dataset_batch(dataset, options, ctx)

    return await _run(runtime, request, deadline, job)
