"""COCO's compressed RLE in numpy: encode, decode and their string form, vectorised, for code that
must run without pycocotools (the service, the client, the synthetic dataset).

:func:`encode_rle` (:func:`encode_rles` for a stack of masks) and :func:`decode_rle` give what
``pycocotools.mask.encode`` / ``decode`` give, bit for bit (tests/test_mask_fast_paths.py). A
compressed string is read in linear time and memory and refused at the first run that goes past
the mask (a counts string is a client's input in the service).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

__all__ = ["decode_rle", "encode_rle", "encode_rles"]


# --------------------------------------------------------------------------------------------
# Compressed RLE (pycocotools' common/maskApi.c: rleEncode, rleToString, rleFrString, rleDecode)
# --------------------------------------------------------------------------------------------


def encode_rle(mask: Any) -> dict[str, Any]:
    """Encode a binary mask as a COCO compressed RLE, as ``pycocotools.mask.encode`` does.

    Args:
        mask (array-like): (H, W) bool or integer mask; non-zero pixels are foreground.

    Returns:
        dict: ``{"size": [H, W], "counts": str}``, the same counts string as pycocotools (which
        returns it as bytes), ready for JSON.
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got shape {array.shape}")
    _check_mask_dtype(array, "mask")
    return _encode(array[None])[0]


def encode_rles(masks: Any) -> list[dict[str, Any]]:
    """:func:`encode_rle` of each of a stack of masks, computed for all of them at once.

    Args:
        masks (array-like): (N, H, W) bool or integer masks; non-zero pixels are foreground.

    Returns:
        list of dict: N times ``{"size": [H, W], "counts": str}``, as :func:`encode_rle` gives.
    """
    array = np.asarray(masks)
    if array.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got shape {array.shape}")
    _check_mask_dtype(array, "masks")
    return _encode(array)


def decode_rle(rle: dict[str, Any], out: np.ndarray | None = None) -> np.ndarray:
    """Decode a COCO RLE to a mask, as ``pycocotools.mask.decode`` does.

    Args:
        rle (dict): ``{"size": [H, W], "counts": ...}`` with compressed counts (str or bytes, as
            written by :func:`encode_rle` and pycocotools) or uncompressed counts (a list of run
            lengths, as in COCO's crowd annotations).
        out (np.ndarray, optional): (H, W) uint8 array to write the mask into, e.g. one row of a
            stack of masks (saves a copy).

    Returns:
        np.ndarray: (H, W) uint8 mask of 0 and 1 (``out`` when given).
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise TypeError(f"rle must be a dict with 'size' and 'counts', got {_describe(rle)}")
    size = rle["size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(_is_int(v) and v >= 0 for v in size)
    ):
        raise ValueError(f"rle['size'] must be [height, width] of non-negative ints, got {size!r}")
    height, width = int(size[0]), int(size[1])
    if out is not None and (not isinstance(out, np.ndarray) or out.shape != (height, width) or out.dtype != np.uint8):
        raise ValueError(f"out must be a {height}x{width} uint8 numpy array, got {_describe(out)}")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        runs = _string_to_counts(counts, limit=height * width)
        total = int(runs.sum())
    elif isinstance(counts, (list, tuple)) and all(_is_int(v) and v >= 0 for v in counts):
        runs = [int(v) for v in counts]
        total = sum(runs)
    else:
        raise TypeError(
            f"rle['counts'] must be a compressed string or a list of non-negative ints, got {_describe(counts)}"
        )
    if total != height * width:
        raise ValueError(
            f"rle['counts'] must cover the {height}x{width} mask ({height * width} pixels), "
            f"got runs summing to {total}"
        )
    values = np.arange(len(runs), dtype=np.uint8) % 2  # runs alternate 0, 1, 0, ...
    columns = np.repeat(values, np.asarray(runs, dtype=np.int64)).reshape(width, height)  # column-major
    if out is None:
        return np.ascontiguousarray(columns.T)
    out[...] = columns.T
    return out


def _check_mask_dtype(array: np.ndarray, name: str) -> None:
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must be bool or integer, got dtype {array.dtype}")


def _encode(masks: np.ndarray) -> list[dict[str, Any]]:
    """:func:`encode_rles` of checked (N, H, W) masks: the runs of every mask from where its
    pixels change, found with whole-stack comparisons in the masks' own (row-major) layout."""
    count, height, width = masks.shape
    area = height * width
    binary = (
        masks.dtype == np.bool_
        or masks.size == 0
        or (masks.max() <= 1 and (masks.dtype.kind == "u" or masks.min() >= 0))
    )
    on = masks if binary else masks != 0  # 0/1 masks are compared as they are
    # COCO numbers pixel (y, x) x * H + y (column-major). A run starts at every pixel that
    # differs from the one before it in that order: the pixel above, for y = 0 the bottom pixel
    # of the previous column, for the first pixel the background (a first run of length 0).
    # Mask k's pixels are numbers k * H * W + ..., so the runs of all masks come out of one sort.
    starts = [np.arange(count + 1, dtype=np.int64) * area]  # where each mask starts, and the end
    if area:
        inner = np.flatnonzero(on[:, 1:, :] != on[:, :-1, :])  # (N, H - 1, W), row-major
        k, rest = np.divmod(inner, max((height - 1) * width, 1))
        y, x = np.divmod(rest, width)
        starts.append(k * area + x * height + y + 1)
        top = np.flatnonzero(on[:, 0, 1:] != on[:, -1, :-1])  # (N, W - 1)
        k, x = np.divmod(top, max(width - 1, 1))
        starts.append(k * area + (x + 1) * height)
        starts.append(np.flatnonzero(on[:, 0, 0]) * area)
    edges = np.sort(np.concatenate(starts))
    counts = np.diff(edges)  # the runs of mask 0, then of mask 1, ...
    owner = edges[:-1] // area if area else np.arange(count)
    first = np.concatenate(([0], np.cumsum(np.bincount(owner, minlength=count))))
    strings = _counts_to_strings(counts, first)
    return [{"size": [int(height), int(width)], "counts": text} for text in strings]


def _counts_to_strings(counts: np.ndarray, first: np.ndarray) -> list[str]:
    """rleToString of several masks at once: mask k's runs are ``counts[first[k]:first[k + 1]]``."""
    # From a mask's fourth run on, the run minus the run two before it is written.
    index = np.arange(len(counts)) - np.repeat(first[:-1], np.diff(first))
    values = counts.copy()
    values[2:] -= np.where(index[2:] > 2, counts[:-2], 0)
    # Each value is written 5 bits a character, least significant first, in as few characters as
    # hold it as a signed number (bit length // 5 + 1), in ASCII 48..111; bit 0x20 says another
    # character follows.
    magnitude = np.where(values < 0, ~values, values)
    length = np.frexp(magnitude.astype(np.float64))[1].astype(np.int64) // 5 + 1
    value = np.repeat(np.arange(len(values)), length)
    end = np.cumsum(length)
    place = np.arange(len(value)) - np.repeat(end - length, length)
    chars = (values[value] >> 5 * place) & 0x1F | np.where(place < length[value] - 1, 0x20, 0)
    text = (chars + 48).astype(np.uint8).tobytes().decode("ascii")
    bounds = np.concatenate(([0], end))[first].tolist()
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _string_to_counts(string: str, limit: int | None = None) -> np.ndarray:
    """rleFrString, all characters at once, refusing what the C code would misread: the runs
    (int64, or Python ints where they would not fit) with the error the first bad value,
    character or the end of the string calls for, in reading order.

    With ``limit`` (the mask's pixel count) the reading stops at the first value that cannot be
    part of such a mask (over 12 characters, or a change of more than ``limit``) and at the first
    run that takes the runs' sum past ``limit``, each with its error: time and memory stay linear
    in the string's length (Python ints are never needed)."""
    if string.isascii():
        chars = np.frombuffer(string.encode("ascii"), dtype=np.uint8).astype(np.int16) - 48  # '0'..'o' -> 0..63
    else:
        chars = (np.frombuffer(string.encode("utf-32-le"), dtype=np.uint32) - np.uint32(48)).view(np.int32)
    bad = len(chars) if not len(chars) or (chars.min() >= 0 and chars.max() < 64) else int(
        np.argmax((chars < 0) | (chars >= 64)))
    ends = np.flatnonzero(chars[:bad] < 32)  # the last character of each value read: bit 0x20 clear
    if limit is not None and (runs := _bounded_runs(string, chars, bad, ends, limit)) is not None:
        return runs
    chars = chars.astype(np.uint32)
    runs = _runs(chars, ends, np.int64)
    if runs is None:
        runs = _runs(chars, ends, object)
    if len(runs) and runs.min() < 0:
        i = int(np.argmax(runs < 0))
        raise ValueError(f"rle['counts'] decodes to a negative run ({runs[i]}) at run {i}")
    if bad < len(chars):
        raise ValueError(f"rle['counts'] must use characters '0'..'o', got {string[bad]!r} at {bad}")
    if len(chars) and chars[-1] >= 32:
        raise ValueError("rle['counts'] is cut short: its last character announces one more")
    return runs


def _bounded_runs(string: str, chars: np.ndarray, bad: int, ends: np.ndarray, limit: int) -> np.ndarray | None:
    """:func:`_string_to_counts` for a mask of ``limit`` pixels (``chars``: the characters minus
    48, ``bad``: the first one outside '0'..'o', ``ends``: where each value ends); None when
    ``limit`` is too large for int64 sums."""
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else ends
    long = np.flatnonzero(ends + 1 - starts > 12)
    read = int(long[0]) if len(long) else len(ends)  # values from the first one over 12 characters are not read
    values = _runs(chars, ends[:read], np.int64, accumulate=False)  # |value| < 2**60
    # Runs of such a mask are 0..limit, so a value (a run, or a run minus the run two before it)
    # beyond +-limit gives a run out of 0..limit by its index at the latest: read up to it.
    far = np.flatnonzero(np.abs(values) > limit)
    if len(far):
        values = values[: int(far[0]) + 1]
    if len(values) * float(limit) >= 2.0**61:
        return None
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    runs = values
    negative = np.flatnonzero(runs < 0)
    past = np.flatnonzero(np.cumsum(np.maximum(runs, 0)) > limit)
    first_negative = int(negative[0]) if len(negative) else len(runs)
    first_past = int(past[0]) if len(past) else len(runs)
    if first_negative < first_past:
        raise ValueError(f"rle['counts'] decodes to a negative run ({runs[first_negative]}) at run {first_negative}")
    if first_past < len(runs):
        raise ValueError(
            f"rle['counts'] runs pass the mask's {limit} pixels at run {first_past} (ending at character "
            f"{int(ends[first_past])})"
        )
    if read < len(ends):
        raise ValueError(
            f"rle['counts'] value {read} (characters {int(starts[read])}..{int(ends[read])}) is longer than the 12 "
            "characters a 64-bit run can take"
        )
    if bad < len(chars):
        raise ValueError(f"rle['counts'] must use characters '0'..'o', got {string[bad]!r} at {bad}")
    if len(chars) and chars[-1] >= 32:
        raise ValueError("rle['counts'] is cut short: its last character announces one more")
    return runs


def _runs(chars: np.ndarray, ends: np.ndarray, dtype: Any, accumulate: bool = True) -> np.ndarray | None:
    """The runs of the values ending at ``ends``, computed in ``dtype``; None when int64 could
    overflow (values of over 12 characters, or sums that could pass 2**62)."""
    if len(ends) == 0:
        return np.zeros(0, dtype=dtype)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends + 1 - starts
    if dtype is not object and lengths.max() > 12:
        return None
    used = chars[: ends[-1] + 1]
    place = np.arange(len(used)) - np.repeat(starts, lengths)
    # 5 bits a character, least significant first. Bit 0x10 of the last one is the sign: C ORs
    # -1 << 5k into a value below 2**5k, which is subtracting 2**5k.
    values = np.add.reduceat((used & 0x1F).astype(dtype) << (5 * place).astype(dtype), starts)
    values -= (used[ends] >= 16).astype(dtype) << (5 * lengths).astype(dtype)
    if not accumulate:
        return values
    if dtype is not object and len(values) * float(np.abs(values).sum(dtype=np.float64)) >= 2.0**62:
        return None
    # From the fourth run on, a value is the run minus the run two before it.
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    return values


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
