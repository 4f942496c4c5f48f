"""CutMix (Yun et al. 2019): a region of ``b`` pasted onto ``a``, boxes and masks following.

The region is a rectangle (``cut_box``, the classic CutMix) or any ``(H, W)`` map (``region``, for
the region family: FMix draws one). Parameters: ``lam ~ Beta(alpha, alpha)`` (clipped to
``lam_clamp``), then a box of area ``(1 - lam) H W`` centred uniformly on the canvas and clipped
to it, ``lam`` recomputed from the clipped box (timm's and torchvision's rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from array_api_compat import device

from detmix import functional as F
from detmix._fields import BoxRules
from detmix._parse import check_pair, parse_sample
from detmix.modes import Mode, register
from detmix.sampling import MixParams, sample_cut_box, sample_lam

__all__ = ["CutMix", "CutMixConfig", "check_cut_params", "cutmix"]


class CutMixConfig(BoxRules):
    """CutMix parameters; the thresholds are those of :func:`detmix.functional.cutmix`."""


def cutmix(
    a: dict[str, Any],
    b: dict[str, Any],
    cut_box: Sequence[int] | None = None,
    *,
    region: Any = None,
    min_visibility: float = 0.0,
    min_area: float = 0.0,
    min_size: float = 1.0,
    weight: F.WeightMode = "visibility",
    box_keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Paste the ``cut_box`` (or ``region``) of ``b`` onto ``a``, with boxes, masks and extras
    following.

    Args:
        a: the sample whose canvas is kept (see :mod:`detmix` for the sample dict).
        b: the sample pasted inside the cut; same canvas, array kind and dtype as ``a``.
        cut_box: ``(x1, y1, x2, y2)`` whole pixels, half-open, inside the canvas.
        region: instead of ``cut_box``, an ``(H, W)`` bool map (numpy or torch, like the image)
            of where ``b`` shows. Exactly one of the two.
        min_visibility: drop boxes whose visible share is below this.
        min_area: drop boxes whose new area (pixels²) is below this.
        min_size: drop boxes whose new width or height is below this.
        weight: per-box weights: ``"visibility"`` (visible share), ``"lam"`` (share of the
            output image that comes from the box's source) or ``"hard"`` (1).
        box_keys: the extra keys that hold one row per box (ids, iscrowd, area...). Default:
            every array with one row per box in both samples. Other extras are sample-level
            and are taken from ``a``.

    Returns:
        A new sample of the same array kind as ``a``: ``image``, ``boxes``, ``labels``,
        ``masks`` (if given), every per-box extra, and ``weights``, ``source`` (0 for ``a``,
        1 for ``b``), ``index`` (row in its source), ``lam`` (the share of pixels outside the
        cut: ``1 - area(cut) / (H * W)``) and ``dropped`` (``source``, ``index``,
        ``visibility``, ``reason`` of every removed box). Kept boxes come in the order of
        ``a``'s then ``b``'s. Inputs are not modified.

    The box rules: with masks, ``mask & ~cut`` for ``a``'s objects and ``mask & cut`` for
    ``b``'s, visibility in mask pixels; a box the cut does not touch is returned as it came, a
    touched one is the tight box of its visible mask clipped to the input box
    (:func:`~detmix.functional.visible_boxes`). Boxes only: for ``cut_box`` the continuous rule
    of :func:`~detmix.functional.cutmix_boxes`; for ``region`` the pixel-centre rule of
    :func:`~detmix.functional.region_boxes` (the two agree on integer boxes). Crowd regions
    (``crowd_boxes``, ``crowd_mask``, ``crowd_masks``) are mixed by
    :func:`~detmix.functional.mix_crowd`, never among the boxes.
    """
    pa, pb = parse_sample(a, "a"), parse_sample(b, "b")
    check_pair(pa, pb)
    min_visibility = F._check_unit(min_visibility, "min_visibility")
    min_area = F._check_non_negative(min_area, "min_area")
    min_size = F._check_non_negative(min_size, "min_size")
    weight = F._check_weight(weight)
    if (cut_box is None) == (region is None):
        raise ValueError("give exactly one of cut_box (x1, y1, x2, y2) and region (an (H, W) bool map), got "
                         + ("both" if cut_box is not None else "neither"))

    xp = pa.xp
    dtype = pa.boxes.dtype
    boxes = F._concat_pair(xp, pa.boxes, xp.astype(pb.boxes, dtype))
    source, _ = F._source_and_index(xp, pa, pb)
    pasted = source == 1
    masks = None
    if region is not None:
        region = F.check_region(region, pa)
        lam = 1.0 - float(xp.sum(xp.astype(region, xp.int64))) / (pa.height * pa.width)
        if pa.masks is not None:
            part_a = F.cutmix_masks(pa.masks, None, pasted[: pa.num_boxes], dtype, region=region, canonical=True)
            part_b = F.cutmix_masks(pb.masks, None, pasted[pa.num_boxes :], dtype, region=region, canonical=True)
            masks, visibility, tight = (F._concat_pair(xp, u, v) for u, v in zip(part_a, part_b))
            boxes = F.visible_boxes(boxes, tight, visibility)
        else:
            boxes, visibility = F.region_boxes(boxes, region, pasted)
        image = F.paste_image(pa.image, pb.image, region, pa.layout)
        crowd = F.mix_crowd(pa.crowd, pb.crowd, pa.height, pa.width, region=region)
    else:
        x1, y1, x2, y2 = F.check_cut_box(cut_box, pa.height, pa.width)
        lam = 1.0 - (x2 - x1) * (y2 - y1) / (pa.height * pa.width)
        if pa.masks is not None:
            # a's masks and b's apart, then the results joined: faster than cutting their concatenation.
            part_a = F.cutmix_masks(pa.masks, (x1, y1, x2, y2), pasted[: pa.num_boxes], dtype, canonical=True)
            part_b = F.cutmix_masks(pb.masks, (x1, y1, x2, y2), pasted[pa.num_boxes :], dtype, canonical=True)
            masks, visibility, tight = (F._concat_pair(xp, u, v) for u, v in zip(part_a, part_b))
            boxes = F.visible_boxes(boxes, tight, visibility)
        else:
            cut = xp.asarray([x1, y1, x2, y2], dtype=dtype, device=device(pa.boxes))
            boxes, visibility = F.cutmix_boxes(boxes, cut, pasted)
        image = F.cutmix_image(pa.image, pb.image, (x1, y1, x2, y2), pa.layout)
        crowd = F.mix_crowd(pa.crowd, pb.crowd, pa.height, pa.width, cut=(x1, y1, x2, y2))
    reason = F.drop_reasons(boxes, visibility, min_visibility=min_visibility, min_area=min_area, min_size=min_size)
    share = xp.where(pasted, xp.full_like(visibility, 1.0 - lam), xp.full_like(visibility, lam))
    return F._assemble(pa, pb, image, boxes, masks, visibility, share, reason, weight, lam, box_keys, crowd)


def check_cut_params(params: MixParams) -> None:
    """``cut_box`` given, inside ``canvas`` (when known) and ``lam = 1 - area / (H * W)``: the
    check of every mode whose parameters are a cut box."""
    x1, y1, x2, y2 = params.cut_box
    if not (0 <= x1 <= x2 and 0 <= y1 <= y2):
        raise ValueError(f"cut_box must satisfy 0 <= x1 <= x2 and 0 <= y1 <= y2, got {list(params.cut_box)}")
    if params.canvas is None:
        return
    x1, y1, x2, y2 = F.check_cut_box(params.cut_box, *params.canvas)
    height, width = params.canvas
    lam = 1.0 - (x2 - x1) * (y2 - y1) / (height * width)
    if abs(lam - params.lam) > 1e-9:
        raise ValueError(
            f"lam must be 1 - area(cut_box) / (height * width) = {lam!r} for cut_box {list(params.cut_box)} on "
            f"the {width}x{height} canvas, got {params.lam!r}"
        )


class CutMix(Mode):
    name = "cutmix"
    config = CutMixConfig
    uses_cut_box = True
    batch_kind = "cut"

    def sample(self, rng: Any, cfg: CutMixConfig, height: int, width: int, partners: Any = ()) -> MixParams:
        lam = sample_lam(rng, cfg.alpha, cfg.lam_clamp)
        box, lam = sample_cut_box(rng, lam, height, width)
        return MixParams(self.name, lam, box, (int(height), int(width)))

    def check(self, params: MixParams) -> None:
        check_cut_params(params)

    def apply(self, a: dict, partners: Any, params: MixParams, cfg: CutMixConfig, box_keys: Any = None) -> dict:
        return cutmix(a, partners[0], params.cut_box, min_visibility=cfg.min_visibility, min_area=cfg.min_area,
                      min_size=cfg.min_size, weight=cfg.weight, box_keys=box_keys)

    def window(self, params: MixParams) -> tuple[int, int, int, int]:
        return params.cut_box


register(CutMix())
