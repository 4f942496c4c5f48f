"""Batch mixing for torchvision detection models: a whole batch at once, on any device.

:class:`BatchMix` takes what torchvision's detection models take, ``images`` (a ``(B, C, H, W)``
tensor or a list of ``(C, H, W)`` tensors) and ``targets`` (a list of dicts with ``boxes``,
``labels`` and optional ``masks``), pairs the images within the batch and mixes each pair with
the box, mask and weight rules of :mod:`detmix.functional`, which it calls once for the whole
batch: the boxes of all images are flattened into one ``(R, 4)`` tensor with a batch index, the
cut boxes are one ``(B, 4)`` tensor, and every rule is evaluated by the same array kernels that
:func:`detmix.functional.cutmix` and :func:`detmix.functional.mixup` use. The result for each pair
equals those functions applied to that pair with the same parameters (after the same padding).

>>> mix = BatchMix("deit", per="pair")
>>> images, targets = mix(images, targets, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
>>> mix.last_params.pair(0)                                                               # doctest: +SKIP
MixParams(mode='cutmix', lam=0.71, cut_box=(12, 40, 180, 150), canvas=(640, 640))

Host and device: the parameters (B values) are drawn on the host; they and the row tables reach
the device in two copies, the kept rows in a third (pinned and non-blocking on CUDA). The one
device->host copy of a call is the keep mask of the rows (R booleans), because each returned
target holds a variable number of boxes. No step synchronises per image or per box.

:class:`MixCollate` wraps a :class:`BatchMix` as a ``DataLoader`` ``collate_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from detmix import functional as kernels  # not F: in torch code that reads as torch.nn.functional
from detmix._parse import CROWD_KEYS, clip_edge_drift
from detmix._torchbatch import (  # the machinery; this module is the public adapter
    _bad_boxes,
    _Batch,
    _box_error,
    _cat,
    _CPU_CHUNK_BYTES,
    _device_sample,
    _flat_masks,
    _flat_xyxy,
    _host_sample,
    _kinds,
    _mix_pixels,
    _NONE,
    _OUTPUT_KEYS,
    _padded,
    _parse_batch,
    _RESERVED,
    _restore_formats,
    _rows,
    _rules,
    _take,
    _to_device,
    _to_host,
    _XYXY,
    padded_crowd,
)
from detmix.modes import get_mode, mode_names
from detmix.recipes import Recipe, load_recipe
from detmix.sampling import MixParams, sample_params

__all__ = ["MODES", "BatchMix", "BatchParams", "MixCollate"]  # noqa: F822 (MODES: module __getattr__)

#: The mode codes of :attr:`BatchParams.mode` are indices into :func:`detmix.modes.mode_names`
#: (``MODES`` in this module, read when asked: a mode registered later has the next code): 0 none,
#: 1 mixup, 2 cutmix, then the region family.
def __getattr__(name: str) -> Any:
    if name == "MODES":
        return mode_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")



# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BatchParams:
    """What one :class:`BatchMix` call did: enough to log it and replay it exactly.

    Output image ``i`` keeps the canvas of input image ``i`` and takes pixels and boxes from
    image ``partner[i]``, as :func:`detmix.apply_params` does with ``pair(i)``.

    Attributes:
        partner (Tensor): ``(B,)`` int64, the batch index of the image mixed into image ``i``;
            ``i`` itself where nothing was mixed.
        mode (Tensor): ``(B,)`` int64 codes into :data:`MODES` (0 none, 1 mixup, 2 cutmix...).
        lam (Tensor): ``(B,)`` float64, the share of output ``i`` that comes from image ``i``
            (1 where nothing was mixed; for CutMix recomputed from the clipped cut box).
        cut (Tensor): ``(B, 4)`` int64 half-open cut boxes ``(x1, y1, x2, y2)``; zeros where the
            mode is not CutMix.
        canvas (tuple[int, int]): ``(height, width)`` of the padded batch the parameters are for.
        per (str): ``"batch"`` (one mode, lam and cut box for the whole batch) or ``"pair"``.
        extra (tuple of dict): each pair's mode-specific parameters (:attr:`MixParams.extra`,
            e.g. ResizeMix's ``paste_box``); empty dicts by default.
    """

    partner: torch.Tensor
    mode: torch.Tensor
    lam: torch.Tensor
    cut: torch.Tensor
    canvas: tuple[int, int]
    per: Literal["batch", "pair"] = "pair"
    extra: tuple[dict[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        partner = torch.as_tensor(self.partner, dtype=torch.int64, device="cpu").reshape(-1)
        size = partner.shape[0]
        mode = torch.as_tensor(self.mode, dtype=torch.int64, device="cpu").reshape(-1)
        lam = torch.as_tensor(self.lam, dtype=torch.float64, device="cpu").reshape(-1)
        cut = torch.as_tensor(self.cut, dtype=torch.int64, device="cpu")
        if cut.numel() == 0:
            cut = cut.reshape(0, 4)
        if mode.shape != (size,) or lam.shape != (size,) or cut.shape != (size, 4):
            raise ValueError(
                f"BatchParams needs partner (B,), mode (B,), lam (B,) and cut (B, 4) for one B, got "
                f"{tuple(partner.shape)}, {tuple(mode.shape)}, {tuple(lam.shape)} and {tuple(cut.shape)}"
            )
        height, width = (int(v) for v in self.canvas)
        if self.per not in ("batch", "pair"):
            raise ValueError(f"per must be 'batch' or 'pair', got {self.per!r}")
        if size and bool(((partner < 0) | (partner >= size)).any()):
            raise ValueError(f"partner must hold batch indices in [0, {size}), got {partner.tolist()}")
        names = mode_names()
        if size and bool(((mode < 0) | (mode >= len(names))).any()):
            raise ValueError(f"mode must hold codes into {names} (0 none, 1 mixup, 2 cutmix...), got {mode.tolist()}")
        if size and not bool(((lam >= 0) & (lam <= 1)).all()):
            raise ValueError(f"lam must be in [0, 1], got {lam.tolist()}")
        is_cut = torch.tensor([get_mode(names[int(c)]).uses_cut_box for c in mode.tolist()], dtype=torch.bool)
        inside = (
            (cut[:, 0] >= 0) & (cut[:, 0] <= cut[:, 2]) & (cut[:, 2] <= width)
            & (cut[:, 1] >= 0) & (cut[:, 1] <= cut[:, 3]) & (cut[:, 3] <= height)
        )
        if size and not bool((inside | ~is_cut).all()):
            i = int(torch.nonzero(is_cut & ~inside)[0, 0])
            raise ValueError(
                f"cut[{i}] must satisfy 0 <= x1 <= x2 <= {width} and 0 <= y1 <= y2 <= {height} (the "
                f"{width}x{height} canvas), got {cut[i].tolist()}"
            )
        cut = torch.where(is_cut[:, None], cut, torch.zeros_like(cut))
        extra = tuple({} for _ in range(size)) if self.extra is None else tuple(dict(e) for e in self.extra)
        if len(extra) != size:
            raise ValueError(f"extra must hold one dict per pair ({size}), got {len(extra)}")
        for name, value in (("partner", partner), ("mode", mode), ("lam", lam), ("cut", cut), ("extra", extra)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "canvas", (height, width))
        # Each mode checks its own parameters (lam of a cut box, a paste box...): one read of each tensor.
        codes, lams, boxes = mode.tolist(), lam.tolist(), cut.tolist()
        for i in range(size):
            try:
                self._pair(names[codes[i]], lams[i], boxes[i], extra[i])
            except ValueError as error:
                raise ValueError(f"pair {i}: {error}") from None

    def __len__(self) -> int:
        return int(self.partner.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchParams):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @property
    def modes(self) -> tuple[str, ...]:
        """The mode of every pair as a string of :data:`MODES`."""
        names = mode_names()
        return tuple(names[c] for c in self.mode.tolist())

    def pair(self, i: int) -> MixParams:
        """The :class:`~detmix.sampling.MixParams` of output ``i``: with
        ``detmix.apply_params(a=sample i, b=sample partner[i], params=pair(i), recipe)`` on the
        padded samples it gives output ``i`` of the batch."""
        return self._pair(mode_names()[int(self.mode[i])], float(self.lam[i]), self.cut[i].tolist(), self.extra[i])

    def _pair(self, name: str, lam: float, cut: list[int], extra: dict[str, Any]) -> MixParams:
        box = tuple(int(v) for v in cut) if get_mode(name).uses_cut_box else None
        return MixParams(name, lam, box, self.canvas, extra)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, for JSON or YAML logs; :meth:`from_dict` reads it back."""
        return {
            "per": self.per,
            "canvas": list(self.canvas),
            "partner": self.partner.tolist(),
            "mode": list(self.modes),
            "lam": self.lam.tolist(),
            "cut": self.cut.tolist(),
            **({"extra": [{k: list(v) if isinstance(v, tuple) else v for k, v in e.items()} for e in self.extra]}
               if any(self.extra) else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchParams:
        """The :class:`BatchParams` that :meth:`to_dict` wrote."""
        names = mode_names()
        try:
            mode = [names.index(m) for m in data["mode"]]
        except ValueError:
            raise ValueError(f"mode must hold {names}, got {list(data['mode'])}") from None
        return cls(
            partner=torch.tensor(list(data["partner"]), dtype=torch.int64),
            mode=torch.tensor(mode, dtype=torch.int64),
            lam=torch.tensor(list(data["lam"]), dtype=torch.float64),
            cut=torch.tensor(list(data["cut"]), dtype=torch.int64).reshape(-1, 4),
            canvas=tuple(data["canvas"]),
            per=data.get("per", "pair"),
            extra=tuple({k: tuple(v) if isinstance(v, list) else v for k, v in e.items()}
                        for e in data.get("extra", [{}] * len(mode))),
        )


# --------------------------------------------------------------------------------------------
# BatchMix
# --------------------------------------------------------------------------------------------


class BatchMix:
    """Mix a batch of detection samples with itself: CutMix and MixUp for torchvision detection
    models, on any device, with boxes, labels, masks and per-box weights following the pixels.

    Each image ``i`` is paired with ``partner[i]`` from a random cyclic order of the batch
    (``order = torch.randperm(B)``, ``partner[order[k]] = order[k + 1 mod B]``): for ``B >= 2``
    no image is paired with itself and every image is mixed into exactly one other. Output ``i``
    keeps image ``i``'s canvas and sample-level keys (``image_id``...) and equals
    ``detmix.apply_params(sample i, sample partner[i], last_params.pair(i), recipe)`` on the
    padded samples. A batch of one has no partner: its image comes back unmixed (mode
    ``"none"``: weight 1 on every box).

    Images of different sizes are padded to a common canvas the way torchvision's
    ``GeneralizedRCNNTransform`` batches them: placed top-left on a canvas of the largest height
    and width (rounded up to ``size_divisible``), filled with ``fill``; box coordinates do not
    change. ``recipe.align`` is not used: a batch has one canvas.

    Args:
        recipe (str, path, dict or Recipe): the mixing recipe (see :func:`detmix.load_recipe`):
            ``prob``, ``switch_prob`` (the DeiT switch), the MixUp and CutMix sections with their
            thresholds and weight modes.
        per (str): ``"batch"``: one draw of mode, lam and cut box for the whole batch (timm's
            ``mode="batch"``, torchvision's ``v2.CutMix``); ``"pair"``: every pair draws its own
            (timm's ``"pair"``).
        box_keys (sequence of str, optional): the target keys that hold one row per box
            (``area``, ``iscrowd``, ids...). Default: every tensor with one row per box in every
            target. They are gathered with the boxes; every other key is sample-level and is
            taken from the image whose canvas is kept.
        generator (torch.Generator, optional): the generator to draw from when a call passes none.
            With neither, the draws come from torch's default (global) generator, as
            torchvision's ``v2.CutMix`` draws: ``torch.manual_seed`` makes them repeatable; an
            injected generator replays exactly whatever else draws from the global one.
        fill (float): value of the padding pixels. Default 0.
        size_divisible (int): round the padded canvas up to a multiple of this (32 in
            ``GeneralizedRCNNTransform``). Default 1.

    Inputs:
        images: a ``(B, C, H, W)`` tensor or a list of ``(C, H, W)`` tensors (``tv_tensors.Image``
            or plain), uint8 or float, all on one device.
        targets: a list of ``B`` dicts with ``boxes`` (an ``(N, 4)`` tensor in absolute xyxy
            pixels, or a ``tv_tensors.BoundingBoxes`` in any unrotated format whose
            ``canvas_size`` is its image's), ``labels`` ``(N,)`` integers and optional ``masks``
            ``(N, H, W)`` bool or uint8 (a tensor or ``tv_tensors.Mask``; for every target or
            none). Boxes must lie inside their image with ``x1 < x2`` and ``y1 < y2``
            (``v2.ClampBoundingBoxes`` and ``v2.SanitizeBoundingBoxes`` ensure it).

    Returns:
        ``(images, targets)`` of the same structure: a tensor for a tensor, a list of views of one
        ``(B, C, H', W')`` tensor for a list (so images grow to the padded canvas), tv_tensors
        types kept. Each target holds the kept ``boxes`` (in the input's format, with
        ``canvas_size`` the padded canvas; float), ``labels``, ``masks`` and per-box extras,
        own boxes first then the partner's, plus ``weights`` (per box, the dtype of the boxes),
        ``mix_source`` (per box, int64: 0 own image, 1 partner) and ``mix_partner`` (0-d int64:
        the batch index of the image mixed in, its own index when nothing was). Labels, masks and
        extras come back in the dtype common to the batch. Inputs are not modified; when nothing
        is mixed and no padding is needed, the input image tensor itself is returned.

    Randomness comes only from the ``torch.Generator`` (given, or torch's default one): the permutation and one 63-bit seed are
    drawn on the generator's device (one copy to the host, none for a CPU generator); the seed
    starts a numpy generator from which :func:`detmix.sample_params` draws each pair's switch,
    lam (Beta, which torch cannot draw from a generator) and cut box (once per batch with
    ``per="batch"``). MixUp's
    lam is rounded to float32 when drawn, so that the batch, blended with lam in a float32
    tensor, equals the per-sample blend bit for bit. :attr:`last_params` holds the draw of the
    last call; :meth:`apply` replays it.
    """

    def __init__(
        self,
        recipe: str | Recipe | dict = "deit",
        *,
        per: Literal["batch", "pair"] = "batch",
        box_keys: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        fill: float = 0,
        size_divisible: int = 1,
    ) -> None:
        self.recipe = load_recipe(recipe)
        several = {n: get_mode(n).partners for n in self.recipe.sections() if get_mode(n).partners != 1}
        if several:
            raise ValueError(
                f"BatchMix pairs each image with one partner of the batch; recipe {self.recipe.name!r} has modes that "
                f"take another number of partners: {several}"
            )
        if per not in ("batch", "pair"):
            raise ValueError(f"per must be 'batch' or 'pair', got {per!r}")
        self.per = per
        if isinstance(box_keys, str):
            raise TypeError(f"box_keys must be a sequence of key names, got the string {box_keys!r}")
        self.box_keys = None if box_keys is None else tuple(box_keys)
        if self.box_keys is not None:
            reserved = sorted((_RESERVED | set(_OUTPUT_KEYS)) & set(self.box_keys))
            if reserved:
                raise ValueError(f"box_keys must not name {reserved}: they are handled by BatchMix")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
            raise ValueError(f"fill must be a finite number, got {fill!r}")
        self.fill = fill
        if isinstance(size_divisible, bool) or not isinstance(size_divisible, int) or size_divisible < 1:
            raise ValueError(f"size_divisible must be an int >= 1, got {size_divisible!r}")
        self.size_divisible = size_divisible
        #: The :class:`BatchParams` of the last call (``None`` before the first).
        self.last_params: BatchParams | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(recipe={self.recipe.name!r}, per={self.per!r})"

    # ---------------------------------------------------------------- randomness

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        generator = self.generator if generator is None else generator
        if generator is None:
            # As torchvision's v2.CutMix: torch's global generator (torch.manual_seed seeds it).
            return torch.default_generator
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator

    def make_params(
        self, batch_size: int, canvas: tuple[int, int], generator: torch.Generator | None = None,
        partners: Any = None,
    ) -> BatchParams:
        """Draw the parameters of a batch of ``batch_size`` images on a ``(height, width)``
        canvas. This is the only place where :class:`BatchMix` draws random numbers.
        ``partners(j)`` gives image ``j`` as a numpy sample on the canvas, for the modes whose
        draw looks at the partner (SaliencyMix); the call reads it back from the device."""
        generator = self._generator(generator)
        size = int(batch_size)
        if size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size!r}")
        height, width = (int(v) for v in canvas)
        if size == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return BatchParams(empty, empty, empty.double(), empty.reshape(0, 4), (height, width), self.per)
        if height < 1 or width < 1:
            raise ValueError(f"canvas must be (height, width) >= 1, got {canvas!r}")
        dev = generator.device
        order = torch.randperm(size, generator=generator, device=dev)
        seed = torch.randint(0, 2**63 - 1, (1,), generator=generator, device=dev)
        draws = _to_host(torch.cat([order, seed]))
        order, rng = draws[:size], np.random.default_rng(int(draws[size]))
        partner = np.empty(size, np.int64)
        partner[order] = np.roll(order, -1)

        # The draw of each pair is detmix.sample_params (the DeiT switch, Beta lam with its clamp,
        # the cut box), once per batch or once per pair: the same rule as every other adapter.
        n = 1 if self.per == "batch" else size
        reads = partners is not None and any(get_mode(m).reads_partner for m in self.recipe.sections())
        drawn = [sample_params(rng, self.recipe, height, width, partners=(partners(int(partner[k])),) if reads else ())
                 for k in range(n)]
        names = mode_names()
        mode = np.array([names.index(p.mode) for p in drawn], np.int64)
        lam = np.array([p.lam for p in drawn], np.float64)
        cut = np.array([p.cut_box or (0, 0, 0, 0) for p in drawn], np.int64).reshape(n, 4)
        # A blend's lam rounded to float32, so the batched blend equals the per-sample one bit for bit.
        blend = _kinds(mode) == "blend"
        lam = np.where(blend, lam.astype(np.float32).astype(np.float64), lam)
        extra = [dict(p.extra) for p in drawn]
        if n == 1:
            mode, lam, cut = np.repeat(mode, size), np.repeat(lam, size), np.repeat(cut, size, axis=0)
            extra = extra * size
        itself = partner == np.arange(size)  # only in a batch of one
        mode = np.where(itself, _NONE, mode)
        unmixed = mode == _NONE
        lam = np.where(unmixed, 1.0, lam)
        cut = np.where(unmixed[:, None], 0, cut)
        partner = np.where(unmixed, np.arange(size), partner)
        extra = [{} if u else e for u, e in zip(unmixed, extra)]
        return BatchParams(
            torch.from_numpy(partner), torch.from_numpy(mode.astype(np.int64)), torch.from_numpy(lam),
            torch.from_numpy(cut), (height, width), self.per, tuple(extra),
        )

    # ---------------------------------------------------------------- entry points

    def __call__(
        self, images: Any, targets: Sequence[Mapping[str, Any]], generator: torch.Generator | None = None
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Mix ``images`` and ``targets`` (see the class docstring) with parameters drawn from
        ``generator`` (or the one given to :class:`BatchMix`, or torch's default generator)."""
        generator = self._generator(generator)
        batch = _parse_batch(images, targets, self.box_keys, self.size_divisible)
        params = self.make_params(batch.size, batch.canvas, generator, partners=lambda j: _host_sample(batch, j))
        return self._apply(batch, params)

    def apply(
        self, images: Any, targets: Sequence[Mapping[str, Any]], params: BatchParams
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Mix with given ``params`` (e.g. :attr:`last_params`, or ``BatchParams.from_dict`` of a
        log): the same inputs give the same output."""
        if not isinstance(params, BatchParams):
            raise TypeError(f"params must be a BatchParams, got {type(params).__name__}")
        batch = _parse_batch(images, targets, self.box_keys, self.size_divisible)
        if len(params) != batch.size:
            raise ValueError(f"params are for a batch of {len(params)} images, got {batch.size}")
        if batch.size and params.canvas != batch.canvas:
            raise ValueError(
                f"params were drawn for canvas {params.canvas} but the batch's padded canvas is {batch.canvas}"
            )
        for name in set(params.modes):
            if get_mode(name).config is not None and self.recipe.section(name) is None:
                raise ValueError(
                    f"params ask for mode {name!r} but recipe {self.recipe.name!r} has no {name!r} section"
                )
        return self._apply(batch, params)

    # ---------------------------------------------------------------- the batch

    def _apply(self, batch: _Batch, params: BatchParams) -> tuple[Any, list[dict[str, Any]]]:
        self.last_params = params
        if batch.size == 0:
            return batch.images, []
        dev = batch.device
        true_partner = params.partner.numpy()
        # Modes without a vectorised path ("pairwise") are run pair by pair at the end; the batch
        # pass treats their images as unmixed.
        kinds = _kinds(params.mode.numpy())
        pairwise = np.array([k is None for k in kinds]) & (params.mode.numpy() != _NONE)
        mode = np.where(pairwise, _NONE, params.mode.numpy())
        partner = np.where(pairwise, np.arange(batch.size), true_partner)
        blend = (kinds == "blend") & ~pairwise
        cuts = np.where(pairwise[:, None], 0, params.cut.numpy())
        counts = batch.counts
        rows = _rows(counts, mode, partner, blend)
        total, num_cut = len(rows.src), rows.num_cut

        # What the device needs from the host: the row tables and the parameters, in two copies.
        heights, widths = np.repeat(batch.sizes[:, 0], counts), np.repeat(batch.sizes[:, 1], counts)
        parts = (rows.src, rows.out, rows.source, rows.mode, partner, cuts.reshape(-1), widths, heights, true_partner)
        ints = _to_device(np.concatenate(parts).astype(np.int64), dev)
        src, out_img, source, row_mode, partner_t, cut_t, lim_w, lim_h, true_partner_t = torch.split(
            ints, [len(p) for p in parts])
        cut_t = cut_t.reshape(-1, 4)
        lam64 = params.lam.numpy()
        floats = _to_device(np.stack([lam64, 1.0 - lam64]), dev)

        # Boxes of all images flattened (N, 4) xyxy, and the rows (R) they become.
        boxes, dtype = _flat_xyxy(batch)
        # Float drift past an edge (a format round trip in float32) is clipped, as in every face.
        boxes = clip_edge_drift(boxes, lim_h, lim_w)
        bad = _bad_boxes(boxes, lim_w, lim_h)
        pasted = source == 1
        lam_t, rest_t = floats[0].to(dtype), floats[1].to(dtype)
        share = torch.where(pasted, rest_t.index_select(0, out_img), lam_t.index_select(0, out_img))
        row_boxes = boxes.index_select(0, src)
        masks = None
        if batch.masks is not None:
            masks = _take(_flat_masks(batch.masks, batch.canvas, dev), src)

        new_boxes, new_masks, weights, reasons = [], [], [], []
        if num_cut:  # CutMix images, and unmixed ones (CutMix with an empty cut, no thresholds)
            sl = slice(0, num_cut)
            cut_rows = cut_t.index_select(0, out_img[sl]).to(dtype)
            if masks is not None:
                m, vis, tight = kernels.cutmix_masks(masks[sl], cut_rows, pasted[sl], dtype, canonical=True)
                b = kernels.visible_boxes(row_boxes[sl], tight, vis)
                new_masks.append(m)
            else:
                b, vis = kernels.cutmix_boxes(row_boxes[sl], cut_rows, pasted[sl])
            new_boxes.append(b)
            reason, weight = _rules(self.recipe, "cut", b, vis, share[sl], row_mode[sl], rows.mode[sl])
            reasons.append(reason)
            weights.append(weight)
        if total > num_cut:  # blended images: geometry unchanged, rules on each image's share
            sl = slice(num_cut, total)
            reason, weight = _rules(self.recipe, "blend", row_boxes[sl], share[sl], share[sl], row_mode[sl],
                                    rows.mode[sl])
            reasons.append(reason)
            weights.append(weight)
            new_boxes.append(row_boxes[sl])
            if masks is not None:
                new_masks.append(masks[sl])
        new_boxes_t = _cat(new_boxes, row_boxes)
        weights_t = _cat(weights, share)
        reason_t = _cat(reasons, torch.zeros(0, dtype=torch.int64, device=dev))
        masks_t = None if masks is None else _cat(new_masks, masks)

        # The one device->host copy: which boxes are kept (and which inputs are invalid).
        flags = _to_host(torch.cat([bad, reason_t < 0]))
        if flags[: len(bad)].any():
            raise _box_error(batch, boxes, int(np.flatnonzero(flags[: len(bad)])[0]))
        kept = np.flatnonzero(flags[len(bad):])
        kept = kept[np.argsort(rows.out[kept], kind="stable")]  # output order: image, source, row
        per_image = np.bincount(rows.out[kept], minlength=batch.size).tolist()
        gather = _to_device(np.concatenate([kept, rows.src[kept], rows.source[kept]]).astype(np.int64), dev)
        kept_t, kept_src, kept_source = torch.split(gather, [len(kept)] * 3)

        out_targets = self._targets(
            batch, per_image, true_partner_t,
            boxes=new_boxes_t.index_select(0, kept_t),
            labels=torch.cat(batch.labels).index_select(0, kept_src),
            masks=None if masks_t is None else _take(masks_t, kept_t),
            weights=weights_t.index_select(0, kept_t),
            source=kept_source,
            extras={k: _take(torch.cat(v), kept_src) for k, v in batch.per_box.items()},
        )
        self._mix_crowd(batch, params, out_targets, pairwise)
        overrides = self._pairwise(batch, params, np.flatnonzero(pairwise), out_targets) if pairwise.any() else {}
        return self._images(batch, mode, blend, partner, partner_t, cut_t, floats[0], overrides), out_targets

    def _pairwise(self, batch: _Batch, params: BatchParams, images: np.ndarray,
                  targets: list[dict[str, Any]]) -> dict[int, torch.Tensor]:
        """Outputs of the images whose mode has no vectorised batch path: the mode's own kernel
        (:meth:`detmix.modes.Mode.apply`) on the padded pair, as every other face runs it. Their
        targets are replaced in ``targets``; their pixels are returned by image index."""
        x = _padded(batch, self.fill)
        boxes, _ = _flat_xyxy(batch)
        boxes = list(boxes.split(batch.counts.tolist()))
        height, width = batch.canvas
        keys = tuple(batch.per_box)
        pixels = {}
        for i in images.tolist():
            j = int(params.partner[i])
            pair = params.pair(i)
            mode = get_mode(pair.mode)
            a = _device_sample(batch, x, boxes, i, keys)
            b = _device_sample(batch, x, boxes, j, keys, padded=not mode.resizes_partner)
            out = mode.apply(a, (b,), pair, self.recipe.section(pair.mode), box_keys=keys)
            pixels[i] = out["image"]
            given = batch.targets[i]
            new = {k: v for k, v in given.items() if k not in _RESERVED and k not in _OUTPUT_KEYS and k not in keys}
            fmt = batch.formats[i]
            out_boxes = out["boxes"] if fmt in (None, _XYXY) else TF.convert_bounding_box_format(out["boxes"], _XYXY, fmt)
            value = given["boxes"]
            new["boxes"] = (tv_tensors.wrap(out_boxes, like=value, canvas_size=batch.canvas)
                            if isinstance(value, tv_tensors.BoundingBoxes) else out_boxes)
            new["labels"] = out["labels"]
            if "masks" in out:
                like = given.get("masks")
                new["masks"] = tv_tensors.wrap(out["masks"], like=like) if isinstance(like, tv_tensors.TVTensor) else out["masks"]
            for key in keys:
                new[key] = out[key]
            for key in CROWD_KEYS:
                if key in out:
                    new[key] = out[key]
            new["weights"] = out["weights"]
            new["mix_source"] = out["source"]
            new["mix_partner"] = params.partner[i].to(batch.device)
            targets[i] = new
        return pixels

    def _mix_crowd(self, batch: _Batch, params: BatchParams, targets: list[dict[str, Any]], pairwise: np.ndarray) -> None:
        """Each output's crowd regions, from its own image and its partner's by
        :func:`detmix.functional.mix_crowd` on the padded canvas. One call per image with crowd
        keys (crowd regions are few); the parameters are on the host already, so nothing
        synchronises."""
        if all(c is None for c in batch.crowd):
            return
        height, width = batch.canvas
        kinds = _kinds(params.mode.numpy())
        for i, target in enumerate(targets):
            if pairwise[i]:  # the mode's own kernel mixes them
                continue
            j = int(params.partner[i])
            pair = padded_crowd(batch, i), padded_crowd(batch, j) if j != i else None
            if pair[0] is None and pair[1] is None:
                continue
            if kinds[i] == "blend":
                mixed = kernels.mix_crowd(*pair, height, width, lam=float(params.lam[i]))
            else:  # a cut box (zeros for an unmixed image)
                mixed = kernels.mix_crowd(*pair, height, width, cut=tuple(int(v) for v in params.cut[i].tolist()))
            boxes = mixed["crowd_boxes"]
            given = batch.targets[i].get("crowd_boxes")
            if isinstance(given, tv_tensors.BoundingBoxes):
                if given.format != _XYXY:
                    boxes = TF.convert_bounding_box_format(boxes, _XYXY, given.format)
                boxes = tv_tensors.wrap(boxes, like=given, canvas_size=batch.canvas)
            target["crowd_boxes"] = boxes
            for key in ("crowd_mask", "crowd_masks"):
                if key in mixed:
                    like = batch.targets[i].get(key)
                    target[key] = tv_tensors.wrap(mixed[key], like=like) if isinstance(like, tv_tensors.TVTensor) else mixed[key]

    def _images(self, batch: _Batch, mode: np.ndarray, blend: np.ndarray, batch_partner: np.ndarray,
                partner: torch.Tensor, cut: torch.Tensor, lam: torch.Tensor, overrides: dict[int, torch.Tensor]):
        x = _padded(batch, self.fill)
        if (mode == _NONE).all():
            out = x
        else:
            lam4 = lam.to(torch.float64 if x.dtype == torch.float64 else torch.float32).reshape(-1, 1, 1, 1)
            size = x.shape[0]
            chunk = size if x.device.type != "cpu" else max(1, _CPU_CHUNK_BYTES // (x[0].numel() * 4))
            if chunk >= size:
                out = _mix_pixels(x, _take(x, partner), cut, lam4, blend)
            else:  # CPU: chunks whose float32 temporaries stay small (see _CPU_CHUNK_BYTES)
                out = torch.empty_like(x)
                host_partner = batch_partner if chunk == 1 else None
                for start in range(0, size, chunk):
                    sl = slice(start, start + chunk)
                    if host_partner is not None:  # one image: its partner is a view, nothing to gather
                        j = int(host_partner[start])
                        b = x[j : j + 1]
                    else:
                        b = _take(x, partner[sl])
                    out[sl] = _mix_pixels(x[sl], b, cut[sl], lam4[sl], blend[sl])
        if overrides:
            if out is x:  # never write into the caller's tensor
                out = x.clone()
            for i, pixels in overrides.items():
                out[i] = pixels
        images = batch.images
        if isinstance(images, torch.Tensor):
            return tv_tensors.wrap(out, like=images) if isinstance(images, tv_tensors.TVTensor) else out
        return [
            tv_tensors.wrap(o, like=src) if isinstance(src, tv_tensors.TVTensor) else o
            for o, src in zip(out.unbind(0), images)
        ]

    def _targets(self, batch: _Batch, per_image: list[int], partner: torch.Tensor, *, boxes, labels, masks,
                 weights, source, extras) -> list[dict[str, Any]]:
        boxes_split = _restore_formats(boxes, per_image, batch)
        split = {
            "labels": labels.split(per_image),
            "weights": weights.split(per_image),
            "mix_source": source.split(per_image),
            **{k: v.split(per_image) for k, v in extras.items()},
        }
        masks_split = None if masks is None else masks.split(per_image)
        out = []
        for i, target in enumerate(batch.targets):
            new: dict[str, Any] = {}
            for key, value in target.items():
                if key == "boxes":
                    new[key] = boxes_split[i]
                elif key == "masks" and masks_split is not None:
                    m = masks_split[i]
                    new[key] = tv_tensors.wrap(m, like=value) if isinstance(value, tv_tensors.TVTensor) else m
                elif key in split:
                    new[key] = split[key][i]
                elif key not in _OUTPUT_KEYS:
                    new[key] = value  # sample-level: from the image whose canvas is kept
            for key in extras:
                new.setdefault(key, split[key][i])
            new["weights"] = split["weights"][i]
            new["mix_source"] = split["mix_source"][i]
            new["mix_partner"] = partner[i]
            out.append(new)
        return out


# --------------------------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------------------------


class MixCollate:
    """A ``DataLoader`` ``collate_fn`` that mixes each batch: a list of ``(image, target)``
    becomes ``(images, targets)`` lists mixed by ``mix`` (see :class:`BatchMix`).

    Args:
        mix (BatchMix): the batch transform.
        generator (torch.Generator, optional): where the draws come from; default
            ``mix.generator``; with neither, torch's default generator, which the ``DataLoader``
            seeds in each worker from its base seed and the worker's id. In the main process (``num_workers=0``) it is used as it is. A
            worker process has a copy of it, so each worker draws from its own generator seeded
            from ``generator.initial_seed()`` and the worker's seed
            (``torch.utils.data.get_worker_info().seed``, new every epoch): workers and epochs
            differ, and a DataLoader given ``generator=`` too is reproducible.

    Example::

        loader = DataLoader(dataset, batch_size=32, shuffle=True,
                            collate_fn=MixCollate(BatchMix("deit"), generator=torch.Generator().manual_seed(0)))
    """

    def __init__(self, mix: BatchMix, generator: torch.Generator | None = None) -> None:
        if not isinstance(mix, BatchMix):
            raise TypeError(f"mix must be a BatchMix, got {type(mix).__name__}")
        generator = mix.generator if generator is None else generator
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.mix = mix
        self.generator = generator
        self._worker: tuple[int, int] | None = None
        self._worker_generator: torch.Generator | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mix!r})"

    def _current_generator(self) -> torch.Generator | None:
        info = torch.utils.data.get_worker_info()
        if info is None or self.generator is None:
            return self.generator
        key = (int(info.id), int(info.seed))
        if self._worker != key:
            seed = np.random.SeedSequence([self.generator.initial_seed(), key[1]]).generate_state(1, np.uint64)[0]
            self._worker_generator = torch.Generator(device=self.generator.device).manual_seed(int(seed) >> 1)
            self._worker = key
        return self._worker_generator

    def __call__(self, batch: Sequence[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
        images, targets = [], []
        for i, item in enumerate(batch):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(f"batch[{i}] must be an (image, target) pair, got {type(item).__name__}")
            images.append(item[0])
            targets.append(item[1])
        out_images, out_targets = self.mix(images, targets, generator=self._current_generator())
        return list(out_images), out_targets

