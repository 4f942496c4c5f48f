"""MixUp (Zhang et al. 2018) for detection (Zhang et al. 2019, "Bag of Freebies"): the pixels
blended ``lam * a + (1 - lam) * b``, the boxes of both kept with their image's share as weight.
Parameters: ``lam ~ Beta(alpha, alpha)``, clipped to ``lam_clamp``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from detmix import functional as F
from detmix._fields import Alpha, MixConfig, Unit
from detmix._parse import check_pair, parse_sample
from detmix.modes import Mode, register
from detmix.sampling import MixParams, sample_lam

__all__ = ["MixUp", "MixUpConfig", "mixup"]


class MixUpConfig(MixConfig):
    """MixUp parameters; ``alpha`` 1.5 is the detection MixUp of "Bag of Freebies"."""

    alpha: Alpha = 1.5
    min_weight: Unit = Field(default=0.0, description="drop the boxes of an image whose share is below this")


def mixup(
    a: dict[str, Any],
    b: dict[str, Any],
    lam: float,
    *,
    min_weight: float = 0.0,
    weight: F.WeightMode = "visibility",
    box_keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Blend ``lam * a + (1 - lam) * b`` and keep the boxes of both.

    Each box's visibility is the share of its image in the blend (``lam`` for ``a``'s boxes,
    ``1 - lam`` for ``b``'s), which is also its weight by default (the per-box loss weights of
    "Bag of Freebies for Training Object Detection Neural Networks"); ``weight="hard"`` gives 1.
    Boxes of an image whose share is 0, or below ``min_weight``, are dropped. Masks and boxes
    are unchanged; crowd regions are those of both (:func:`~detmix.functional.mix_crowd`). The
    result has the same keys as :func:`~detmix.functional.cutmix`'s.
    """
    pa, pb = parse_sample(a, "a"), parse_sample(b, "b")
    check_pair(pa, pb)
    lam = F._check_unit(lam, "lam")
    min_weight = F._check_unit(min_weight, "min_weight")
    weight = F._check_weight(weight)

    xp = pa.xp
    dtype = pa.boxes.dtype
    boxes = F._concat_pair(xp, pa.boxes, xp.astype(pb.boxes, dtype))
    source, _ = F._source_and_index(xp, pa, pb)
    share = xp.where(source == 1, xp.full_like(boxes[:, 0], 1.0 - lam), xp.full_like(boxes[:, 0], lam))
    reason = F.mixup_drop_reasons(share, min_weight=min_weight)
    masks = None if pa.masks is None else F._concat_pair(xp, pa.masks, xp.astype(pb.masks, pa.masks.dtype))
    image = F.mixup_image(pa.image, pb.image, lam)
    crowd = F.mix_crowd(pa.crowd, pb.crowd, pa.height, pa.width, lam=lam)
    return F._assemble(pa, pb, image, boxes, masks, share, share, reason, weight, lam, box_keys, crowd)


class MixUp(Mode):
    name = "mixup"
    config = MixUpConfig
    batch_kind = "blend"

    def sample(self, rng: Any, cfg: MixUpConfig, height: int, width: int, partners: Any = ()) -> MixParams:
        return MixParams(self.name, sample_lam(rng, cfg.alpha, cfg.lam_clamp), None, (int(height), int(width)))

    def row_rules(self, cfg: MixUpConfig, boxes: Any, visibility: Any, share: Any) -> tuple[Any, Any]:
        return F.mixup_drop_reasons(share, min_weight=cfg.min_weight), F.box_weights(cfg.weight, share, share)

    def apply(self, a: dict, partners: Any, params: MixParams, cfg: MixUpConfig, box_keys: Any = None) -> dict:
        return mixup(a, partners[0], params.lam, min_weight=cfg.min_weight, weight=cfg.weight, box_keys=box_keys)


register(MixUp())
