"""Python client of the detmix REST service (``detmix serve``).

>>> from detmix.client import DetmixClient
>>> with DetmixClient("http://127.0.0.1:8000") as client:            # doctest: +SKIP
...     batch = client.dataset_batch("synthetic", batch_size=8, seed=0)
...     batch.images[0].shape, batch.targets[0]["boxes"].shape
((240, 320, 3), (5, 4))
>>> again = client.mix(images, coco, recipe="deit", params=batch.params)  # doctest: +SKIP

:class:`DetmixClient` (``httpx.Client``) and :class:`AsyncDetmixClient` (``httpx.AsyncClient``)
return a :class:`MixedBatch`: numpy images ``(H, W, 3)`` uint8 and one target dict per image
(``as_tensors=True``: torch ``(3, H, W)`` uint8 images and tensors, as torchvision's detection
models take them). Answers 429 and 503, and connection failures, are retried ``retries`` times,
after the ``Retry-After`` the server sent or else a capped exponential back-off with jitter;
mixing is a pure function of the request, so a retry is safe. Other errors raise
:class:`ServiceError` with the server's ``detail`` (field locations and messages).

:class:`ServiceBatches` streams mixed batches into a training loop (a torch ``IterableDataset``
when torch is installed). Needs ``httpx`` (``pip install "detmix[client]"``).
"""

from __future__ import annotations

import base64
import email.utils
import importlib.util
import io
import json
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image

from detmix.rle import decode_rle

__all__ = ["AsyncDetmixClient", "DetmixClient", "MixedBatch", "ServiceBatches", "ServiceError", "batch_seed"]

RETRY_STATUSES = frozenset({429, 503})
_sleep = time.sleep  # replaced in tests


class ServiceError(RuntimeError):
    """The service refused a request: ``status`` and ``detail`` (a list of ``{loc, msg, type}``)."""

    def __init__(self, status: int, detail: Any, method: str = "", url: str = "") -> None:
        self.status = status
        self.detail = detail
        messages = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
            for d in (detail if isinstance(detail, list) else [detail])
        )
        super().__init__(f"{method} {url} answered {status}: {messages}".strip())


@dataclass
class MixedBatch:
    """A mixed batch. ``targets[i]`` holds ``boxes`` (N, 4) float32 xyxy, ``labels`` (N,) int64
    (category ids), ``weights`` (N,) float32, ``area``, ``iscrowd`` (0: only objects are
    targets), ``source_image_id``, ``source_annotation_id``, ``masks`` (N, H, W) uint8 when the
    batch had masks, ``image_id`` and ``dropped`` (the annotations that did not survive, as the
    server listed them). Crowd regions (``iscrowd=1`` in the answer) are never among the boxes:
    they come apart as ``crowd_boxes`` (M, 4) float32 xyxy and, when the batch had masks,
    ``crowd_mask`` (H, W) uint8, their union, as :class:`detmix.coco.CocoDetectionSource` gives
    them.
    ``params`` are the images' ``mix`` records: pass them back as ``params=`` to replay."""

    images: list[Any]
    targets: list[dict[str, Any]]
    params: list[dict[str, Any]]
    seed: int | None
    answer: dict[str, Any] = field(repr=False)


def _to_tensors(images: list[np.ndarray], targets: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]]]:
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))) for image in images]
    converted = [{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in t.items()} for t in targets]
    return tensors, converted


def _xyxy(anns: list[dict[str, Any]]) -> np.ndarray:
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def parse_answer(answer: dict[str, Any], as_tensors: bool = False) -> MixedBatch:
    """A :class:`MixedBatch` from the JSON answer of ``/v1/mix`` or ``/v1/datasets/{name}/batch``."""
    answer_has_masks = any(a.get("segmentation") for a in answer["annotations"])
    images, targets = [], []
    by_image: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in answer["images"]}
    for ann in answer["annotations"]:
        by_image[ann["image_id"]].append(ann)
    dropped: dict[int, list[dict[str, Any]]] = {image["id"]: [] for image in answer["images"]}
    for item in answer["dropped"]:
        dropped[item["image_id"]].append(item)
    for image in answer["images"]:
        with Image.open(io.BytesIO(base64.b64decode(image["data"]))) as file:
            pixels = np.asarray(file.convert("RGB"), dtype=np.uint8)
        anns = [a for a in by_image[image["id"]] if not a.get("iscrowd")]
        crowd = [a for a in by_image[image["id"]] if a.get("iscrowd")]
        target: dict[str, Any] = {
            "boxes": _xyxy(anns),
            "labels": np.array([a["category_id"] for a in anns], dtype=np.int64),
            "weights": np.array([a["mix_weight"] for a in anns], dtype=np.float32),
            "area": np.array([a["area"] for a in anns], dtype=np.float32),
            "iscrowd": np.array([a["iscrowd"] for a in anns], dtype=np.int64),
            "source_image_id": np.array([a["source_image_id"] for a in anns], dtype=np.int64),
            "source_annotation_id": np.array([a["source_annotation_id"] for a in anns], dtype=np.int64),
        }
        target["crowd_boxes"] = _xyxy(crowd)
        if answer_has_masks:  # the batch had masks: every annotation has its segmentation
            canvas = pixels.shape[:2]
            target["masks"] = np.stack([decode_rle(a["segmentation"]) for a in anns]) if anns else np.zeros(
                (0, *canvas), np.uint8)
            union = np.zeros(canvas, np.uint8)
            for a in crowd:
                union |= decode_rle(a["segmentation"])
            target["crowd_mask"] = union
        target["image_id"] = image["id"]
        target["dropped"] = dropped[image["id"]]
        images.append(pixels)
        targets.append(target)
    if as_tensors:
        images, targets = _to_tensors(images, targets)
    return MixedBatch(images, targets, [image["mix"] for image in answer["images"]], answer.get("seed"), answer)


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a stream seeded with ``seed`` (63 bits, independent draws)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _is_torch(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only once torch was imported
    return torch is not None and isinstance(value, torch.Tensor)


def _encode(image: Any, index: int = 0) -> tuple[bytes, int, int]:
    """File bytes and (width, height) of an image: an ``(H, W, 3)`` uint8 array or a torch
    ``(3, H, W)`` uint8 tensor (as torchvision's detection models take them; sent as PNG), or
    encoded file bytes (sent as they are)."""
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as file:
            width, height = file.size
        return bytes(image), width, height
    if _is_torch(image):
        import torch

        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"images[{index}] must be a (3, H, W) uint8 tensor, got {image.dtype} {tuple(image.shape)}")
        array = image.detach().permute(1, 2, 0).cpu().numpy()
    else:
        array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"images[{index}] must be an (H, W, 3) uint8 array, a (3, H, W) uint8 tensor or encoded "
                         f"file bytes, got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), array.shape[1], array.shape[0]


class _Protocol:
    """What the sync and async clients share: requests built, answers and retries judged."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not (0 < backoff <= max_backoff):
            raise ValueError(f"backoff must satisfy 0 < backoff <= max_backoff, got {backoff} and {max_backoff}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._jitter = random.Random()

    def _options(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "api_key": self.api_key, "timeout": self.timeout, "retries": self.retries,
                "backoff": self.backoff, "max_backoff": self.max_backoff}

    def _headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key} if self.api_key else {}

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): ``Retry-After`` when sent, else
        ``backoff * 2**attempt`` with jitter; never more than ``max_backoff``."""
        header = response.headers.get("Retry-After") if response is not None else None
        if header:
            try:
                return min(max(float(header), 0.0), self.max_backoff)
            except ValueError:
                when = email.utils.parsedate_to_datetime(header)
                if when is not None:
                    return min(max(when.timestamp() - time.time(), 0.0), self.max_backoff)
        return min(self.backoff * 2**attempt, self.max_backoff) * (0.5 + 0.5 * self._jitter.random())

    @staticmethod
    def _check(response: httpx.Response) -> Any:
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = response.text
        raise ServiceError(response.status_code, detail, response.request.method, str(response.request.url))

    @staticmethod
    def _mix_request(images: Sequence[Any], coco: Mapping[str, Any], recipe: Any, seed: int | None,
                     params: Any, output_format: str, quality: int) -> dict[str, Any]:
        """The multipart form of ``POST /v1/mix``."""
        records = [dict(record) for record in coco["images"]]
        if len(records) != len(images):
            raise ValueError(f"coco['images'] must describe each of the {len(images)} images, got {len(records)} records")
        files = []
        for k, (record, image) in enumerate(zip(records, images, strict=True)):
            data, width, height = _encode(image, k)
            record.setdefault("width", width)
            record.setdefault("height", height)
            record["file_name"] = f"{k}-{record['id']}"
            record.pop("data", None)
            files.append(("images", (record["file_name"], data, "application/octet-stream")))
        body = {key: coco[key] for key in ("annotations", "categories") if key in coco}
        body.update(images=records, recipe=recipe, output={"format": output_format, "quality": quality})
        if seed is not None:
            body["seed"] = seed
        if params is not None:
            body["params"] = list(params)
        return {"data": {"request": json.dumps(body, allow_nan=False)}, "files": files}

    @staticmethod
    def _batch_request(batch_size: int | None, seed: int | None, image_ids: Sequence[int] | None, recipe: Any,
                       params: Any, output_format: str, quality: int) -> dict[str, Any]:
        body: dict[str, Any] = {"recipe": recipe, "output": {"format": output_format, "quality": quality}}
        if image_ids is not None:
            body["image_ids"] = list(image_ids)
        elif batch_size is not None:
            body["batch_size"] = batch_size
        if seed is not None:
            body["seed"] = seed
        if params is not None:
            body["params"] = list(params)
        return {"json": body}


class DetmixClient(_Protocol):
    """Synchronous client. ``transport`` (an ``httpx`` transport) is for tests and custom stacks."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 timeout: float = 120.0, retries: int = 5, backoff: float = 0.25, max_backoff: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout, retries, backoff, max_backoff)
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=self._headers(),
                                    transport=transport)

    def clone(self) -> DetmixClient:
        """A new client with the same settings (for another process)."""
        return DetmixClient(**self._options())

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> DetmixClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                _sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                _sleep(self._delay(attempt, response))
                continue
            return self._check(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def mix(self, images: Sequence[Any], coco: Mapping[str, Any], recipe: str | Mapping[str, Any] = "deit",
            seed: int | None = None, *, params: Sequence[Mapping[str, Any]] | None = None,
            output_format: str = "jpeg", quality: int = 90, as_tensors: bool = False) -> MixedBatch:
        """Mix ``images`` ((H, W, 3) uint8 arrays, (3, H, W) uint8 tensors or encoded JPEG/PNG/WebP
        bytes) with the COCO ``coco`` (``images`` records in the same order, ``annotations``,
        ``categories``)."""
        request = self._mix_request(images, coco, recipe, seed, params, output_format, quality)
        return parse_answer(self._call("POST", "/v1/mix", **request), as_tensors)

    def dataset_batch(self, name: str = "synthetic", batch_size: int | None = 8, seed: int | None = None, *,
                      image_ids: Sequence[int] | None = None, recipe: str | Mapping[str, Any] = "deit",
                      params: Sequence[Mapping[str, Any]] | None = None, output_format: str = "jpeg",
                      quality: int = 90, as_tensors: bool = False) -> MixedBatch:
        """A mixed batch drawn from the server's dataset ``name``."""
        request = self._batch_request(batch_size, seed, image_ids, recipe, params, output_format, quality)
        return parse_answer(self._call("POST", f"/v1/datasets/{name}/batch", **request), as_tensors)

    def recipes(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/recipes")

    def datasets(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/datasets")

    def ready(self) -> bool:
        try:
            return self._client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False


class AsyncDetmixClient(_Protocol):
    """The same as :class:`DetmixClient`, with ``async`` methods (asyncio or trio)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 timeout: float = 120.0, retries: int = 5, backoff: float = 0.25, max_backoff: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout, retries, backoff, max_backoff)
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=self._headers(),
                                         transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncDetmixClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import anyio

        for attempt in range(self.retries + 1):
            try:
                response = await self._client.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                await anyio.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                await anyio.sleep(self._delay(attempt, response))
                continue
            return self._check(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def mix(self, images: Sequence[Any], coco: Mapping[str, Any], recipe: str | Mapping[str, Any] = "deit",
                  seed: int | None = None, *, params: Sequence[Mapping[str, Any]] | None = None,
                  output_format: str = "jpeg", quality: int = 90, as_tensors: bool = False) -> MixedBatch:
        request = self._mix_request(images, coco, recipe, seed, params, output_format, quality)
        return parse_answer(await self._call("POST", "/v1/mix", **request), as_tensors)

    async def dataset_batch(self, name: str = "synthetic", batch_size: int | None = 8, seed: int | None = None, *,
                            image_ids: Sequence[int] | None = None, recipe: str | Mapping[str, Any] = "deit",
                            params: Sequence[Mapping[str, Any]] | None = None, output_format: str = "jpeg",
                            quality: int = 90, as_tensors: bool = False) -> MixedBatch:
        request = self._batch_request(batch_size, seed, image_ids, recipe, params, output_format, quality)
        return parse_answer(await self._call("POST", f"/v1/datasets/{name}/batch", **request), as_tensors)

    async def recipes(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/v1/recipes")

    async def datasets(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/v1/datasets")

    async def ready(self) -> bool:
        try:
            return (await self._client.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False


if importlib.util.find_spec("torch") is not None:
    from torch.utils.data import IterableDataset as _StreamBase
else:  # pragma: no cover - torch is optional
    _StreamBase = object


class ServiceBatches(_StreamBase):
    """Mixed batches streamed from the service: each item is ``(images, targets)`` of one batch.

    Batch ``k`` is ``client.dataset_batch(dataset, batch_size, seed=batch_seed(seed, k))``, so the
    stream is reproducible and the same whatever the number of ``DataLoader`` workers: worker
    ``w`` of ``n`` fetches the batches ``k = w, w + n, ...`` with a client of its own. Use it with
    ``DataLoader(stream, batch_size=None)``. ``num_batches=None`` streams without end.
    """

    def __init__(self, client: DetmixClient, dataset: str = "synthetic", batch_size: int = 8, seed: int = 0, *,
                 num_batches: int | None = None, recipe: str | Mapping[str, Any] = "deit",
                 as_tensors: bool | None = None, output_format: str = "jpeg", quality: int = 90) -> None:
        if num_batches is not None and num_batches < 0:
            raise ValueError(f"num_batches must be >= 0 or None, got {num_batches}")
        self.client = client
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_batches = num_batches
        self.recipe = recipe
        self.as_tensors = _StreamBase is not object if as_tensors is None else as_tensors
        self.output_format = output_format
        self.quality = quality

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless ServiceBatches (num_batches=None) has no length")
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[list[Any], list[dict[str, Any]]]]:
        worker, workers, client = 0, 1, self.client
        if _StreamBase is not object:
            from torch.utils.data import get_worker_info

            info = get_worker_info()
            if info is not None:
                worker, workers, client = info.id, info.num_workers, self.client.clone()
        k = worker
        while self.num_batches is None or k < self.num_batches:
            batch = client.dataset_batch(self.dataset, self.batch_size, batch_seed(self.seed, k), recipe=self.recipe,
                                         output_format=self.output_format, quality=self.quality,
                                         as_tensors=self.as_tensors)
            yield batch.images, batch.targets
            k += workers
