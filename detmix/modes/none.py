"""``none``: the sample passes through unmixed (a recipe's ``1 - prob``, a batch of one). Every
box of ``a`` is kept with weight 1; the partner's are reported as dropped but were not in play."""

from __future__ import annotations

from typing import Any

from detmix import functional as F
from detmix.modes import Mode, register
from detmix.sampling import MixParams

__all__ = ["NoMix"]


class NoMix(Mode):
    name = "none"
    config = None
    batch_kind = "cut"  # a CutMix with an empty cut

    def sample(self, rng: Any, cfg: Any, height: int, width: int, partners: Any = ()) -> MixParams:
        return MixParams(self.name, 1.0, None, (int(height), int(width)))

    def check(self, params: MixParams) -> None:
        if params.lam != 1.0:
            raise ValueError(f"lam must be 1 for mode 'none' (nothing of the partner shows), got {params.lam!r}")

    def apply(self, a: dict, partners: Any, params: MixParams, cfg: Any, box_keys: Any = None) -> dict:
        return F.cutmix(a, partners[0], (0, 0, 0, 0), min_visibility=0.0, min_area=0.0, min_size=0.0, weight="hard",
                        box_keys=box_keys)

    def window(self, params: MixParams) -> tuple[int, int, int, int]:
        return (0, 0, 0, 0)

    def partner_in_play(self, params: MixParams) -> bool:
        return False

    def row_rules(self, cfg: Any, boxes: Any, visibility: Any, share: Any) -> tuple[Any, Any]:
        return F.drop_reasons(boxes, visibility), F.box_weights("hard", visibility, share)

    def describe(self, params: MixParams) -> str:
        return "not mixed"


register(NoMix())
