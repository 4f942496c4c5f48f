"""The memory budget of one batch: what a request will cost, estimated before anything is decoded.

One setting, ``max_batch_memory_bytes``, bounds the memory that one batch may take on the server
(above the idle process). Every request is priced before the work it prices: the JSON text before
it is parsed (:func:`json_cost`), then the parsed batch before any image, polygon or RLE is decoded
(:func:`batch_cost`). A request over the budget is refused with 422 (type ``memory_budget``)
naming what it would take, part by part.

The prices (bytes per unit) are upper bounds measured on the service itself (peak RSS of the
server per request; ``docs/service.md`` gives the figures and the machine):

* a JSON value (number, string, list...) as ``json.loads`` and the pydantic models hold it;
* a byte of the body, kept while the batch runs (with the base64 text and the decoded file);
* a pixel of an input image (its decoded RGB, kept for the whole batch), and a pixel of the
  largest canvas a pair can have (the pair's work: aligned copies, float blend, output, encoding);
* a mask pixel (one image-sized uint8 mask per annotation with a segmentation, kept for the batch,
  and the pair's mask work);
* a polygon coordinate (Python floats, pycocotools' rasterisation) and an RLE ``counts`` item
  (a character of a string or a run of a list: the reader's arrays, and the runs of the mixed
  masks that such a mask gives);
* an annotation (its model, its records in the answer, dropped or kept).

The limits per kind follow: alone, a batch may have at most ``budget // price`` of a kind
(:func:`derived_limits`); together they share the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "PRICES", "BatchCost", "Prices", "batch_cost", "derived_limits", "json_cost", "json_values", "over_budget_message",
]

MiB = 2**20


@dataclass(frozen=True)
class Prices:
    """Bytes of server memory per unit of a request (measured upper bounds)."""

    json_value: int = 120
    body_byte: int = 4
    image_pixel: int = 3
    canvas_pixel: int = 48
    mask_pixel: int = 4
    polygon_coordinate: int = 80
    rle_character: int = 128
    annotation: int = 4096


PRICES = Prices()


@dataclass(frozen=True)
class BatchCost:
    """What a batch would take, part by part (bytes)."""

    parts: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(size for _, size in self.parts)

    def describe(self) -> str:
        return ", ".join(f"{name} {size / MiB:.1f} MiB" for name, size in self.parts if size)


def json_values(text: bytes) -> int:
    """An upper bound of the number of values in a JSON text, without parsing it: every value
    but the outermost follows a ``,`` or opens a container (``[``, ``{``, a member's ``:``).
    Counted in C, one pass per byte sought; base64 image data holds none of them."""
    return text.count(b",") + text.count(b"[") + text.count(b"{") + text.count(b":") + 1


def json_cost(text: bytes, prices: Prices = PRICES) -> BatchCost:
    """The memory a JSON body will take once parsed and validated."""
    return BatchCost((("JSON values", json_values(text) * prices.json_value),
                      ("body", len(text) * prices.body_byte)))


def batch_cost(
    image_sizes: Sequence[tuple[int, int]],
    mask_pixels: int,
    polygon_coordinates: int = 0,
    rle_characters: int = 0,
    annotations: int = 0,
    prices: Prices = PRICES,
) -> BatchCost:
    """The memory of a batch of images of ``(height, width)`` sizes: decoded inputs, the largest
    canvas a pair can have (``max height x max width``, as ``align: pad`` makes it), the masks,
    the polygons and RLE counts to decode, the annotations."""
    pixels = sum(h * w for h, w in image_sizes)
    canvas = max((h for h, _ in image_sizes), default=0) * max((w for _, w in image_sizes), default=0)
    return BatchCost((
        ("images", pixels * prices.image_pixel + canvas * prices.canvas_pixel),
        ("masks", mask_pixels * prices.mask_pixel),
        ("polygons", polygon_coordinates * prices.polygon_coordinate),
        ("RLE counts", rle_characters * prices.rle_character),
        ("annotations", annotations * prices.annotation),
    ))


def derived_limits(budget: int, prices: Prices = PRICES) -> dict[str, int]:
    """The most of each kind one batch may hold when it holds nothing else."""
    return {
        "mask_pixels": budget // prices.mask_pixel,
        "polygon_points": budget // (2 * prices.polygon_coordinate),
        "rle_characters": budget // prices.rle_character,
        "annotations": budget // prices.annotation,
        "json_values": budget // prices.json_value,
    }


def over_budget_message(what: str, cost: BatchCost, budget: int) -> str:
    return (f"{what} would take about {cost.total / MiB:.1f} MiB of server memory ({cost.describe()}), more than "
            f"the memory budget of {budget / MiB:.1f} MiB per batch (max_batch_memory_bytes)")
