"""Former name of :mod:`detmix.synthetic` (the embedded synthetic COCO dataset) and
:mod:`detmix.rle` (the numpy COCO RLE codec), kept so that existing imports work."""

from detmix.rle import decode_rle, encode_rle, encode_rles  # noqa: F401
from detmix.synthetic import *  # noqa: F401,F403
from detmix.synthetic import CATEGORIES, SyntheticCoco, default_dataset, make_synthetic_coco  # noqa: F401
