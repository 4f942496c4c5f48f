"""detmix.torch: batch mixing for torchvision detection models.

The reference for every output is :func:`detmix.apply_params` (so ``detmix.functional.cutmix`` /
``mixup``) on the pair, padded to the batch's canvas, with the parameters the batch drew.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision import tv_tensors
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import detmix.torch as dt
from detmix.modes import mode_names
from conftest import DEVICES
from detmix import MixParams, apply_params, functional as F
from detmix.torch import BatchMix, BatchParams, MixCollate

XYXY = tv_tensors.BoundingBoxFormat.XYXY
MIXED = {  # every mode, thresholds that drop boxes, and both weight modes
    "name": "mixed",
    "prob": 0.7,
    "mixup": {"alpha": 1.0, "min_weight": 0.35, "weight": "lam"},
    "cutmix": {"alpha": 1.0, "min_visibility": 0.3, "min_area": 6.0, "min_size": 2.0},
}
SIZES = [(20, 30), (24, 24), (16, 32), (24, 28), (20, 30)]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_batch(seed, sizes=SIZES, *, masks=False, min_boxes=0, max_boxes=4, dtype=torch.uint8, fmt=None,
               device="cpu", image_type=torch.Tensor):
    """Random images and targets: integer and half-pixel boxes, per-box extras, an image_id."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for i, (h, w) in enumerate(sizes):
        image = torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
        if dtype.is_floating_point:
            image = image.to(dtype) / 255
        n = int(rng.integers(min_boxes, max_boxes + 1))
        x1, y1 = rng.integers(0, 2 * w - 1, n) / 2, rng.integers(0, 2 * h - 1, n) / 2  # whole and half pixels
        x2 = np.minimum(x1 + rng.integers(1, 2 * w + 1, n) / 2, w)
        y2 = np.minimum(y1 + rng.integers(1, 2 * h + 1, n) / 2, h)
        xyxy = torch.tensor(np.stack([x1, y1, x2, y2], 1), dtype=torch.float32).reshape(n, 4)
        boxes = xyxy
        if fmt is not None:
            boxes = tv_tensors.BoundingBoxes(TF.convert_bounding_box_format(xyxy, XYXY, fmt), format=fmt,
                                             canvas_size=(h, w))
        target = {
            "boxes": boxes.to(device),
            "labels": torch.arange(1, n + 1, device=device) + 10 * i,
            "area": ((xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])).to(device),
            "iscrowd": torch.zeros(n, dtype=torch.int64, device=device),
            "image_id": 100 + i,
        }
        if masks:
            m = torch.zeros(n, h, w, dtype=torch.uint8)
            for k, (a, b, c, d) in enumerate(xyxy.tolist()):
                m[k, int(np.ceil(b)):int(d), int(np.ceil(a)):int(c)] = 1
            m &= torch.from_numpy((rng.random((n, h, w)) > 0.2).astype(np.uint8))
            target["masks"] = (tv_tensors.Mask(m) if fmt is not None else m).to(device)
        images.append(image_type(image).to(device) if image_type is not torch.Tensor else image.to(device))
        targets.append(target)
    return images, targets


def pad(x, canvas, fill=0):
    out = x.new_full((*x.shape[:-2], *canvas), fill)
    out[..., : x.shape[-2], : x.shape[-1]] = x
    return out


def as_sample(image, target, canvas):
    """The per-sample input of detmix.functional: padded, boxes in xyxy, plain tensors."""
    boxes = target["boxes"]
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        boxes = TF.convert_bounding_box_format(boxes, new_format=XYXY)
    sample = {k: (v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v) for k, v in target.items()}
    sample["image"] = pad(image.as_subclass(torch.Tensor), canvas)
    sample["boxes"] = boxes.as_subclass(torch.Tensor)
    if "masks" in sample:
        sample["masks"] = pad(sample["masks"], canvas)
    return sample


def check_against_functional(mix, images, targets, out_images, out_targets, box_keys=None):
    """Every output equals apply_params on its pair with the drawn parameters."""
    params = mix.last_params
    canvas = params.canvas
    samples = [as_sample(im, t, canvas) for im, t in zip(images, targets)]
    assert len(out_images) == len(out_targets) == len(samples)
    for i, (image, target) in enumerate(zip(out_images, out_targets)):
        j = int(params.partner[i])
        ref = apply_params(samples[i], samples[j], params.pair(i), mix.recipe, box_keys=box_keys)
        assert image.shape == (3, *canvas) and image.dtype == images[i].dtype
        torch.testing.assert_close(image.as_subclass(torch.Tensor), ref["image"], rtol=0, atol=0)
        boxes = target["boxes"]
        if isinstance(targets[i]["boxes"], tv_tensors.BoundingBoxes):
            assert isinstance(boxes, tv_tensors.BoundingBoxes)
            assert boxes.format == targets[i]["boxes"].format and boxes.canvas_size == canvas
            boxes = TF.convert_bounding_box_format(boxes, new_format=XYXY)
        torch.testing.assert_close(boxes.as_subclass(torch.Tensor), ref["boxes"], rtol=0, atol=1e-5)
        for key, expected in (("labels", ref["labels"]), ("weights", ref["weights"]),
                              ("mix_source", ref["source"]), ("area", ref["area"]), ("iscrowd", ref["iscrowd"])):
            torch.testing.assert_close(target[key], expected, rtol=0, atol=0, msg=f"{key} of output {i}")
        if "masks" in ref:
            torch.testing.assert_close(target["masks"].as_subclass(torch.Tensor), ref["masks"], rtol=0, atol=0)
            assert type(target["masks"]) is type(targets[i]["masks"])
        else:
            assert "masks" not in target
        assert target["image_id"] == targets[i]["image_id"]
        assert int(target["mix_partner"]) == j and target["mix_partner"].ndim == 0
    return params


# ---------------------------------------------------------------- equality with detmix.functional


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", ["deit", "cutmix", "mixup", MIXED], ids=["deit", "cutmix", "mixup", "mixed"])
@pytest.mark.parametrize("masks", [False, True], ids=["boxes", "masks"])
@pytest.mark.parametrize("per", ["batch", "pair"])
def test_each_pair_equals_functional(per, masks, recipe, device):
    mix = BatchMix(recipe, per=per)
    seen = set()
    for seed in range(4):
        images, targets = make_batch(seed, masks=masks, device=device)
        out_images, out_targets = mix(images, targets, generator=gen(seed))
        assert isinstance(out_images, list) and all(o.device.type == device for o in out_images)
        params = check_against_functional(mix, images, targets, out_images, out_targets)
        if per == "batch":
            assert len(set(params.modes)) == 1 and len({tuple(c) for c in params.cut.tolist()}) == 1
        seen.update(params.modes)
    if recipe is MIXED and per == "pair":
        assert seen == {"none", "mixup", "cutmix"}


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32, torch.float64])
def test_tensor_batch_comes_back_as_a_tensor(dtype):
    images, targets = make_batch(3, [(24, 32)] * 6, dtype=dtype, masks=True)
    batch = tv_tensors.Image(torch.stack(images))
    mix = BatchMix(MIXED, per="pair")
    out, out_targets = mix(batch, targets, generator=gen(1))
    assert isinstance(out, tv_tensors.Image) and out.shape == batch.shape and out.dtype == dtype
    check_against_functional(mix, list(batch), targets, list(out), out_targets)


@pytest.mark.parametrize("fmt", ["XYXY", "XYWH", "CXCYWH"])
def test_bounding_boxes_keep_their_format_and_get_the_canvas(fmt):
    fmt = tv_tensors.BoundingBoxFormat[fmt]
    images, targets = make_batch(5, masks=True, fmt=fmt, image_type=tv_tensors.Image)
    mix = BatchMix("deit", per="pair")
    out_images, out_targets = mix(images, targets, generator=gen(2))
    assert all(isinstance(o, tv_tensors.Image) for o in out_images)
    assert all(isinstance(t["masks"], tv_tensors.Mask) for t in out_targets)
    check_against_functional(mix, images, targets, out_images, out_targets)  # format, canvas_size, values
    assert out_targets[0]["boxes"].canvas_size == (24, 32) != targets[0]["boxes"].canvas_size


def test_mixed_box_kinds_in_one_batch():
    images, targets = make_batch(7, [(20, 20)] * 4, max_boxes=3)
    targets[1]["boxes"] = tv_tensors.BoundingBoxes(TF.convert_bounding_box_format(targets[1]["boxes"], XYXY, "XYWH"),
                                                   format="XYWH", canvas_size=(20, 20))
    targets[2]["boxes"] = targets[2]["boxes"].round().to(torch.int64)  # integer boxes are computed as float32
    targets[2]["area"] = targets[2]["area"].round()
    mix = BatchMix("deit", per="pair")
    out_images, out_targets = mix(images, targets, generator=gen(0))
    ref = [dict(t, boxes=t["boxes"].float()) if i == 2 else t for i, t in enumerate(targets)]
    check_against_functional(mix, images, ref, out_images, out_targets)
    assert out_targets[1]["boxes"].format == tv_tensors.BoundingBoxFormat.XYWH
    assert type(out_targets[0]["boxes"]) is torch.Tensor and out_targets[2]["boxes"].dtype == torch.float32


@pytest.mark.parametrize("masks", [False, True])
def test_empty_targets(masks):
    images, targets = make_batch(11, masks=masks, max_boxes=3)
    for i in (0, 3):
        targets[i] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                      "area": torch.zeros(0), "iscrowd": torch.zeros(0, dtype=torch.int64), "image_id": i}
        if masks:
            targets[i]["masks"] = torch.zeros(0, *images[i].shape[1:], dtype=torch.uint8)
    mix = BatchMix("deit", per="pair")
    for seed in range(3):
        out_images, out_targets = mix(images, targets, generator=gen(seed))
        check_against_functional(mix, images, targets, out_images, out_targets)
    nothing = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in images]
    _, out_targets = mix(images, nothing, generator=gen(0))
    assert [t["boxes"].shape for t in out_targets] == [(0, 4)] * len(images)
    assert all(t["weights"].shape == (0,) and t["mix_source"].dtype == torch.int64 for t in out_targets)


@pytest.mark.parametrize("masks", [False, True])
def test_a_batch_of_one_has_no_partner_and_passes_through(masks):
    images, targets = make_batch(4, [(20, 30)], masks=masks, max_boxes=4)
    batch = torch.stack(images)
    mix = BatchMix("deit", per="pair")
    out, out_targets = mix(batch, targets, generator=gen(0))
    params = mix.last_params
    assert params.modes == ("none",) and params.partner.tolist() == [0] and params.lam.tolist() == [1.0]
    assert out is batch  # nothing mixed, nothing padded: the input tensor itself
    check_against_functional(mix, list(batch), targets, list(out), out_targets)  # apply_params' "none"
    (t,) = out_targets
    assert (t["weights"] == 1).all() and (t["mix_source"] == 0).all() and int(t["mix_partner"]) == 0
    if not masks:
        assert torch.equal(t["boxes"], targets[0]["boxes"])


def test_an_empty_batch():
    mix = BatchMix("deit", generator=gen(0))
    assert mix([], []) == ([], [])
    empty = torch.zeros(0, 3, 8, 8)
    out, out_targets = mix(empty, [])
    assert out is empty and out_targets == [] and len(mix.last_params) == 0


def test_padding_is_generalized_rcnn_transform_batching():
    images, targets = make_batch(2, fmt=XYXY)
    mix = BatchMix({"prob": 0.0, "mixup": {}}, size_divisible=32, fill=0)
    out, out_targets = mix(images, targets, generator=gen(0))
    transform = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3)
    expected = transform.batch_images(images, size_divisible=32)
    assert expected.shape[-2:] == (32, 32)
    torch.testing.assert_close(torch.stack(out), expected, rtol=0, atol=0)
    for t, o in zip(targets, out_targets):
        assert torch.equal(o["boxes"], t["boxes"]) and o["boxes"].canvas_size == (32, 32)
    filled, _ = BatchMix({"prob": 0.0, "mixup": {}}, fill=7)(images, targets, generator=gen(0))
    assert (filled[2][:, 16:, :] == 7).all()  # the 16x32 image padded below with the fill value


# ---------------------------------------------------------------- randomness


def test_pairs_form_one_random_cycle():
    mix = BatchMix("deit", per="pair")
    g = gen(0)
    for size in range(2, 7):
        pairings = set()
        for _ in range(60):
            partner = mix.make_params(size, (8, 8), g).partner.tolist()
            assert sorted(partner) == list(range(size))  # a permutation: each image is pasted once
            i, steps = partner[0], 1
            while i != 0:  # one cycle through the whole batch, hence no image paired with itself
                i, steps = partner[i], steps + 1
            assert steps == size
            pairings.add(tuple(partner))
        assert len(pairings) == math.factorial(size - 1) if size <= 4 else len(pairings) > 15  # all cycles drawn


def all_modes_seed(mix, size, canvas):
    """The first seed whose draw for ``size`` images has every mode."""
    every = {"none", "mixup", "cutmix"}
    return next(s for s in range(200) if set(mix.make_params(size, canvas, gen(s)).modes) == every)


def test_draws_follow_the_recipe():
    g = gen(3)
    deit = BatchMix("deit", per="pair")
    params = [deit.make_params(50, (40, 60), g) for _ in range(20)]
    modes = np.concatenate([p.mode.numpy() for p in params])
    assert abs((modes == 2).mean() - 0.5) < 0.05 and (modes == 0).sum() == 0  # switch_prob 0.5, prob 1
    lam = np.concatenate([p.lam.numpy()[p.mode.numpy() == 1] for p in params])
    assert abs(lam.mean() - 0.5) < 0.03 and abs(lam.var() - 0.25 / (2 * 0.8 + 1)) < 0.02  # Beta(0.8, 0.8)
    assert (lam.astype(np.float32).astype(np.float64) == lam).all()  # rounded to float32 when drawn
    for p in params:
        for i in np.flatnonzero(p.mode.numpy() == 2):
            x1, y1, x2, y2 = p.cut[i].tolist()
            assert p.lam[i].item() == 1 - (x2 - x1) * (y2 - y1) / (40 * 60)  # lam from the clipped box
    half = BatchMix(dict(MIXED, prob=0.25), per="pair")
    modes = np.concatenate([half.make_params(50, (8, 8), g).mode.numpy() for _ in range(20)])
    assert abs((modes == 0).mean() - 0.75) < 0.05
    clamp = BatchMix({"mixup": {"alpha": 0.5, "lam_clamp": [0.3, 0.6]}}, per="pair").make_params(400, (8, 8), g)
    assert clamp.lam.min() >= 0.3 - 1e-7 and clamp.lam.max() <= 0.6 + 1e-7
    batch = [BatchMix("deit", per="batch").make_params(6, (80, 80), g) for _ in range(40)]
    assert all(len(set(p.lam.tolist())) == 1 and len(set(p.modes)) == 1 for p in batch)
    assert len({p.modes[0] for p in batch}) == 2 and len({p.lam[0].item() for p in batch}) > 30


def test_same_generator_same_output_and_replay():
    images, targets = make_batch(9, masks=True)
    mix = BatchMix(MIXED, per="pair")
    torch.manual_seed(0)
    np.random.seed(0)
    state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    one = mix(images, targets, generator=gen(5))
    params = mix.last_params
    two = BatchMix(MIXED, per="pair", generator=gen(5))(images, targets)
    logged = BatchParams.from_dict(json.loads(json.dumps(params.to_dict())))
    assert logged == params
    three = BatchMix(MIXED, per="pair").apply(images, targets, logged)
    for other in (two, three):
        for a, b in zip(one[0], other[0]):
            assert torch.equal(a, b)
        for a, b in zip(one[1], other[1]):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    assert torch.equal(torch.random.get_rng_state(), state[0]) and (np.random.get_state()[1] == state[1]).all()
    g = gen(5)
    mix(images, targets, generator=g)
    mix(images, targets, generator=g)
    assert mix.last_params != params  # the generator advanced


def test_params_record():
    p = BatchParams([1, 0, 2], [2, 2, 0], [0.75, 0.5, 1.0], [[0, 0, 2, 2], [0, 0, 4, 2], [5, 5, 6, 6]], (4, 4))
    assert p.modes == ("cutmix", "cutmix", "none") and p.cut[2].tolist() == [0, 0, 0, 0]
    assert p.pair(0) == MixParams("cutmix", 0.75, (0, 0, 2, 2), (4, 4))
    assert p.pair(2) == MixParams("none", 1.0, None, (4, 4))
    assert BatchParams.from_dict(p.to_dict()) == p
    cases = [
        (dict(mode=[2, 2]), r"BatchParams needs partner (B,), mode (B,), lam (B,) and cut (B, 4) for one B"),
        (dict(partner=[1, 0, 3]), "partner must hold batch indices in [0, 3), got [1, 0, 3]"),
        (dict(mode=[2, 2, 99]), "mode must hold codes into ('none', 'mixup', 'cutmix'"),
        (dict(lam=[0.5, 0.5, 1.5]), "lam must be in [0, 1], got [0.5, 0.5, 1.5]"),
        (dict(cut=[[0, 0, 5, 2], [0, 0, 1, 1], [0, 0, 0, 0]]),
         "cut[0] must satisfy 0 <= x1 <= x2 <= 4 and 0 <= y1 <= y2 <= 4 (the 4x4 canvas), got [0, 0, 5, 2]"),
    ]
    base = dict(partner=[1, 0, 2], mode=[2, 2, 0], lam=[0.75, 0.5, 1.0], cut=[[0, 0, 2, 2], [0, 0, 4, 2], [0] * 4],
                canvas=(4, 4))
    for change, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            BatchParams(**{**base, **change})
    with pytest.raises(ValueError, match=re.escape(f"mode must hold {mode_names()}, got ['mosaic']")):
        BatchParams.from_dict({**p.to_dict(), "mode": ["mosaic"]})


# ---------------------------------------------------------------- vectorised, sync-free


class HostReads(TorchDispatchMode):
    """Counts every way a tensor's values can reach the host: ops that synchronise on an
    accelerator (scalar reads, nonzero, boolean-mask indexing...) and .cpu/.numpy/.tolist."""

    SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "unique_consecutive",
               "_unique2", "unique_dim", "allclose"}

    def __init__(self, monkeypatch):
        super().__init__()
        self.events: list[str] = []
        for name in ("cpu", "numpy", "tolist"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        def method(tensor, *args, **kwargs):
            self.events.append(name)
            return original(tensor, *args, **kwargs)
        return method

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in self.SYNCING:
            self.events.append(name)
        if name.startswith("index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for a in args if isinstance(a, (list, tuple)) for i in a
        ):
            self.events.append("bool-index")
        if name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) > 1:
            self.events.append(name)
        return func(*args, **kwargs)


def _count_host_reads(monkeypatch, mix, images, targets, device):
    seed = all_modes_seed(mix, len(images), (24, 32))
    with monkeypatch.context() as m:
        counter = HostReads(m)
        syncs = []
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught, counter:
                warnings.simplefilter("always")
                mix(images, targets, generator=gen(seed))
            syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    assert set(mix.last_params.modes) == {"none", "mixup", "cutmix"}
    return counter.events, len(syncs)


@pytest.mark.parametrize("device", DEVICES)
def test_host_reads_do_not_grow_with_the_batch(monkeypatch, device):
    mix = BatchMix(MIXED, per="pair")
    small = make_batch(0, SIZES[:3], masks=True, device=device)
    large = make_batch(1, SIZES * 3, masks=True, max_boxes=8, device=device)
    events_small, syncs_small = _count_host_reads(monkeypatch, mix, *small, device)
    events_large, syncs_large = _count_host_reads(monkeypatch, mix, *large, device)
    assert sorted(events_small) == sorted(events_large)  # the same reads for 3 or 15 images
    # the draws (free for a CPU generator), the targets' iscrowd flags (one read for the batch:
    # crowd rows leave the boxes before the kernels) and the keep mask
    assert events_large.count("cpu") == 3
    assert not {"nonzero", "bool-index", "masked_select", "repeat_interleave"} & set(events_large)
    assert syncs_small == syncs_large <= 2  # CUDA: the iscrowd flags and the keep mask


def test_the_whole_batch_goes_through_each_kernel_once(monkeypatch):
    calls: dict[str, int] = {}
    for name in ("cutmix_boxes", "cutmix_masks", "drop_reasons", "mixup_drop_reasons", "box_weights",
                 "cutmix_image", "mixup_image"):
        original = getattr(F, name)

        def counting(*args, _name=name, _original=original, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(F, name, counting)
    mix = BatchMix(MIXED, per="pair")
    for sizes, masks in ((SIZES[:3], False), (SIZES * 4, False), (SIZES[:3], True), (SIZES * 4, True)):
        calls.clear()
        mix(*make_batch(3, sizes, masks=masks, min_boxes=1), generator=gen(all_modes_seed(mix, len(sizes), (24, 32))))
        assert set(mix.last_params.modes) == {"none", "mixup", "cutmix"}
        expected = {"drop_reasons": 2, "mixup_drop_reasons": 1, "box_weights": 3, "cutmix_image": 1, "mixup_image": 1,
                    ("cutmix_masks" if masks else "cutmix_boxes"): 1}
        assert calls == expected, (len(sizes), masks)


@pytest.mark.parametrize("chunk", [1, 3])
def test_cpu_chunks_of_images_give_the_same_result(monkeypatch, chunk):
    images, targets = make_batch(12, [(24, 32)] * 7, masks=True)
    batch = torch.stack(images)
    monkeypatch.setattr(dt, "_CPU_CHUNK_BYTES", chunk * batch[0].numel() * 4)  # float32 bytes of `chunk` images
    mix = BatchMix(MIXED, per="pair")
    out, out_targets = mix(batch, targets, generator=gen(all_modes_seed(mix, 7, (24, 32))))
    check_against_functional(mix, images, targets, list(out), out_targets)


def test_inputs_are_not_modified():
    images, targets = make_batch(6, masks=True, fmt=tv_tensors.BoundingBoxFormat.CXCYWH)
    before = [(i.clone(), {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in t.items()})
              for i, t in zip(images, targets)]
    BatchMix(MIXED, per="pair")(images, targets, generator=gen(0))
    for (image, target), (i0, t0) in zip(zip(images, targets), before):
        assert torch.equal(image, i0) and target.keys() == t0.keys()
        assert all(torch.equal(target[k], t0[k]) if isinstance(t0[k], torch.Tensor) else target[k] == t0[k] for k in t0)


def test_extras_ride_along_by_shape_or_by_box_keys():
    images, targets = make_batch(8, [(20, 20)] * 4, max_boxes=3)
    for i, t in enumerate(targets):
        n = t["boxes"].shape[0]
        t["ids"] = torch.arange(n, dtype=torch.int32) + 1000 * i
        t["orig_size"] = torch.tensor([20, 20])  # two rows: per-box by shape for an image of 2 boxes
    mix = BatchMix("deit", per="pair", box_keys=["ids", "area", "iscrowd"])
    out_images, out_targets = mix(images, targets, generator=gen(2))
    check_against_functional(mix, images, targets, out_images, out_targets, box_keys=["ids", "area", "iscrowd"])
    params = mix.last_params
    for i, t in enumerate(out_targets):
        owner = torch.where(t["mix_source"] == 0, i, params.partner[i])
        assert torch.equal(t["ids"] // 1000, owner.to(torch.int32))  # each id came with its box
        assert t["orig_size"] is targets[i]["orig_size"]


# ---------------------------------------------------------------- torchvision pipelines


class Shapes(torch.utils.data.Dataset):
    """A few tv_tensors samples of two sizes through a torchvision.transforms.v2 pipeline."""

    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 8

    def __getitem__(self, i):
        images, targets = make_batch(100 + i, [(24 + 4 * (i % 2), 32)], masks=True,
                                     fmt=tv_tensors.BoundingBoxFormat.XYWH, image_type=tv_tensors.Image)
        return self.transform(images[0], targets[0])


def test_after_a_v2_pipeline_in_a_dataloader_with_mix_collate():
    pipeline = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.ToDtype(torch.float32, scale=True)])
    dataset = Shapes(pipeline)
    collate = MixCollate(BatchMix("deit", per="pair"), generator=gen(0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate)
    for b, (images, targets) in enumerate(loader):
        assert all(isinstance(i, tv_tensors.Image) and i.dtype == torch.float32 for i in images)
        assert all(t["boxes"].format == tv_tensors.BoundingBoxFormat.XYWH for t in targets)
        inputs = [dataset[4 * b + k] for k in range(4)]
        check_against_functional(collate.mix, [x[0] for x in inputs], [x[1] for x in inputs], images, targets)
    # and the output goes on through v2 transforms: boxes and masks flip with the pixels
    image, target = v2.RandomHorizontalFlip(p=1.0)(images[0], targets[0])
    torch.testing.assert_close(image, images[0].flip(-1))
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYWH
    torch.testing.assert_close(target["boxes"][:, 0], 32 - targets[0]["boxes"][:, 0] - targets[0]["boxes"][:, 2])
    assert torch.equal(target["masks"], targets[0]["masks"].flip(-1)) and target["weights"] is targets[0]["weights"]


def test_the_output_trains_a_torchvision_detection_model():
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    images, targets = make_batch(0, [(120, 160), (100, 150), (128, 128)], masks=True, dtype=torch.float32,
                                 min_boxes=1, fmt=tv_tensors.BoundingBoxFormat.CXCYWH, image_type=tv_tensors.Image)
    images, targets = BatchMix("deit", per="pair")(images, targets, generator=gen(0))
    targets = [v2.ConvertBoundingBoxFormat("XYXY")(t) for t in targets]  # what the model expects
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the model's initial weights and sampling, without touching the caller's state
        model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=50).train()
        losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_each_worker_draws_from_its_own_generator(monkeypatch):
    batch = [(i, t) for i, t in zip(*make_batch(0, [(16, 16)] * 6))]
    info = SimpleNamespace(id=0, seed=1000)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)

    def partners(collate):
        collate(batch)
        return collate.mix.last_params.to_dict()

    g = gen(0)
    state = g.get_state()
    a = MixCollate(BatchMix("deit", per="pair"), generator=g)
    first = [partners(a) for _ in range(3)]
    assert first[0] != first[1]  # a worker's generator advances from call to call
    info.id, info.seed = 1, 1001
    other = [partners(a) for _ in range(3)]
    assert other != first  # another worker, other draws
    info.id, info.seed = 0, 1000
    b = MixCollate(BatchMix("deit", per="pair"), generator=gen(0))
    assert [partners(b) for _ in range(3)] == first  # reproducible from the generator and the worker seed
    info.seed = 2000  # the next epoch's worker 0
    assert partners(b) != first[0]
    assert torch.equal(g.get_state(), state)  # the injected generator itself is not drawn from in a worker


def test_worker_processes_do_not_replay_the_pickled_generator():
    def run():
        collate = MixCollate(BatchMix("deit", per="pair"), generator=gen(0))
        loader = torch.utils.data.DataLoader(Shapes(v2.Identity()), batch_size=4, num_workers=2, collate_fn=collate,
                                             generator=gen(1))
        return [torch.stack(list(images)) for images, _ in loader]

    one, two = run(), run()
    assert len(one) == 2 and all(torch.equal(a, b) for a, b in zip(one, two))  # reproducible
    dataset = Shapes(v2.Identity())
    for b, batch in enumerate(one):  # each worker's first batch: not what gen(0)'s copy would draw
        images, targets = zip(*[dataset[4 * b + k] for k in range(4)])
        copied, _ = BatchMix("deit", per="pair")(list(images), list(targets), generator=gen(0))
        assert not torch.equal(batch, torch.stack(copied))


# ---------------------------------------------------------------- properties


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    sizes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=5),
    masks=st.booleans(),
    per=st.sampled_from(["batch", "pair"]),
    recipe=st.sampled_from(["deit", MIXED]),
)
def test_any_batch_equals_functional(seed, sizes, masks, per, recipe):
    images, targets = make_batch(seed, sizes, masks=masks, max_boxes=3)
    mix = BatchMix(recipe, per=per)
    out_images, out_targets = mix(images, targets, generator=gen(seed))
    check_against_functional(mix, images, targets, out_images, out_targets)


# ---------------------------------------------------------------- errors


def _two():
    images = [torch.zeros(3, 8, 10, dtype=torch.uint8), torch.zeros(3, 8, 10, dtype=torch.uint8)]
    targets = [{"boxes": torch.tensor([[1.0, 1.0, 4.0, 4.0]]), "labels": torch.tensor([1])} for _ in images]
    return images, targets


def _set(i, key, value):
    def change(images, targets):
        targets[i][key] = value
        return images, targets
    return change


def _bb(data, fmt="XYXY", canvas=(8, 10)):
    return tv_tensors.BoundingBoxes(torch.tensor(data, dtype=torch.float32), format=fmt, canvas_size=canvas)


CALL_ERRORS = [
    (lambda im, t: (5, t), TypeError,
     "images must be a (B, C, H, W) tensor or a list of (C, H, W) tensors, got int"),
    (lambda im, t: (im[0], t), ValueError,
     "images must be a (B, C, H, W) tensor or a list of (C, H, W) tensors, got a tensor of shape (3, 8, 10)"),
    (lambda im, t: ([im[0][0], im[1]], t), ValueError, "images[0] must have shape (C, H, W), got (8, 10)"),
    (lambda im, t: ([im[0].numpy(), im[1]], t), TypeError, "images[0] must be a torch.Tensor (C, H, W), got ndarray"),
    (lambda im, t: ([im[0], im[1][:1]], t), ValueError, "images[1] has 1 channels but images[0] has 3"),
    (lambda im, t: ([im[0].int(), im[1].int()], t), TypeError,
     "images[0] must have dtype in ('uint8', 'float16', 'bfloat16', 'float32', 'float64'), got int32"),
    (lambda im, t: ([im[0], im[1].float()], t), TypeError, "images[1] has dtype float32 but images[0] has uint8"),
    (lambda im, t: ([im[0], im[1][:, :0]], t), ValueError,
     "images[1] must have a non-empty canvas, got shape (3, 0, 10)"),
    (lambda im, t: (im, t[0]), TypeError, "targets must be a list of dicts (one per image), got dict"),
    (lambda im, t: (im, t[:1]), ValueError, "targets must have one dict per image (2 images), got 1 targets"),
    (lambda im, t: (im, [t[0], []]), TypeError, "targets[1] must be a dict with 'boxes' and 'labels', got list"),
    (lambda im, t: (im, [t[0], {"labels": t[1]["labels"]}]), ValueError,
     "targets[1] is missing ['boxes']; each target needs 'boxes' and 'labels'"),
    (_set(0, "boxes", [[1.0, 1.0, 4.0, 4.0]]), TypeError,
     "targets[0]['boxes'] must be a torch.Tensor (N, 4) in xyxy pixels or a tv_tensors.BoundingBoxes, got list"),
    (_set(0, "boxes", torch.zeros(1, 3)), ValueError, "targets[0]['boxes'] must have shape (N, 4), got (1, 3)"),
    (_set(0, "boxes", torch.ones(1, 4, dtype=torch.bool)), TypeError,
     "targets[0]['boxes'] must be real numbers, got dtype bool"),
    (_set(1, "labels", torch.tensor([1, 2])), ValueError,
     "targets[1]['labels'] must have shape (1,) to match targets[1]['boxes'], got (2,)"),
    (_set(1, "labels", torch.tensor([1.0])), TypeError, "targets[1]['labels'] must be integers, got dtype float32"),
    (_set(1, "labels", [1]), TypeError, "targets[1]['labels'] must be a torch.Tensor (1,), got list"),
    (_set(0, "masks", torch.zeros(1, 10, 8, dtype=torch.uint8)), ValueError,
     "targets[0]['masks'] must have shape (1, 8, 10) (one mask per box on the canvas of images[0]), got (1, 10, 8)"),
    (lambda im, t: _set(1, "masks", torch.zeros(1, 8, 10))(*_set(0, "masks", torch.zeros(1, 8, 10))(im, t)),
     TypeError, "targets[0]['masks'] must be bool or uint8, got dtype float32"),
    (_set(1, "masks", torch.zeros(1, 8, 10, dtype=torch.bool)), ValueError,
     "targets[1] has 'masks' but targets[0] has none; give masks for every target or for none"),
    (_set(1, "boxes", torch.tensor([[1.0, 1.0, 11.0, 4.0]])), ValueError,
     "targets[1]['boxes'][0] must lie inside the 10x8 canvas of images[1] (0 <= x <= 10, 0 <= y <= 8), "
     "got [1.0, 1.0, 11.0, 4.0]; clamp boxes first (v2.ClampBoundingBoxes)"),
    (_set(1, "boxes", torch.tensor([[5.0, 1.0, 5.0, 3.0]])), ValueError,
     "targets[1]['boxes'][0] must satisfy x1 < x2 and y1 < y2 (xyxy), got [5.0, 1.0, 5.0, 3.0]"),
    (_set(0, "boxes", torch.tensor([[0.0, float("nan"), 2.0, 2.0]])), ValueError,
     "targets[0]['boxes'][0] must be finite, got [0.0, nan, 2.0, 2.0]"),
    (_set(1, "boxes", _bb([[6.0, 1.0, 5.0, 3.0]], "XYWH")), ValueError,
     "targets[1]['boxes'][0] must lie inside the 10x8 canvas of images[1] (0 <= x <= 10, 0 <= y <= 8), "
     "got [6.0, 1.0, 11.0, 4.0] (xyxy, converted from XYWH)"),
    (_set(0, "boxes", _bb([[1.0, 1.0, 4.0, 4.0]], canvas=(10, 8))), ValueError,
     "targets[0]['boxes'].canvas_size must be the (height, width) of images[0], (8, 10), got (10, 8)"),
    (_set(0, "boxes", _bb([[1.0, 1.0, 4.0, 4.0, 0.0]], "XYWHR")), ValueError,
     "targets[0]['boxes'] has the rotated format XYWHR; BatchMix supports XYXY, XYWH and CXCYWH"),
    (_set(0, "boxes", torch.zeros(1, 4, device="meta")), ValueError,
     "targets[0]['boxes'] is on meta but the images are on cpu; move targets with the images"),
    (_set(0, "kp", tv_tensors.KeyPoints(torch.zeros(1, 2), canvas_size=(8, 10))), TypeError,
     "targets[0]['kp'] holds KeyPoints, which BatchMix does not mix; remove them first"),
]


@pytest.mark.parametrize(("change", "error", "message"), CALL_ERRORS, ids=[m[:40] for _, _, m in CALL_ERRORS])
def test_call_errors_name_the_argument(change, error, message):
    images, targets = change(*_two())
    with pytest.raises(error, match=re.escape(message)):
        BatchMix("deit", per="pair")(images, targets, generator=gen(0))


def _eight():
    g = torch.Generator().manual_seed(5)
    images = [torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8, generator=g) for _ in range(8)]
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 20.0, 18.0]]), "labels": torch.tensor([i + 1])} for i in range(8)]
    return images, targets


def test_without_a_generator_draws_from_torchs_default_one_as_torchvision_does():
    images, targets = _eight()
    mix = BatchMix("deit", per="pair")
    torch.manual_seed(123)
    out_images, out_targets = mix(images, targets)
    first = mix.last_params
    assert len(out_images) == 8 and all("weights" in t for t in out_targets)
    assert sorted(first.partner.tolist()) == list(range(8)) and (first.partner != torch.arange(8)).all()
    # The global generator advanced: the next call draws something else ...
    mix(images, targets)
    assert mix.last_params.to_dict() != first.to_dict()
    # ... and torch.manual_seed repeats the draw, as it does for v2.CutMix.
    torch.manual_seed(123)
    again_images, again_targets = mix(images, targets)
    assert mix.last_params.to_dict() == first.to_dict()
    assert all(torch.equal(x, y) for x, y in zip(out_images, again_images))
    assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(out_targets, again_targets))
    # An injected generator still replays exactly, whatever the global generator did meanwhile.
    injected = mix(images, targets, generator=gen(7))
    torch.manual_seed(999)
    torch.rand(10)
    assert mix(images, targets, generator=gen(7))[0][3].equal(injected[0][3])
    # The collate function too: no generator needed, the global one (per worker, seeded by the DataLoader).
    torch.manual_seed(123)
    collated = MixCollate(BatchMix("deit", per="pair"))(list(zip(images, targets)))
    assert all(torch.equal(x, y) for x, y in zip(collated[0], out_images))


def _round_tripped(xyxy, canvas=(480, 640)):
    """XYXY boxes taken to CXCYWH and back in float32, as a v2 pipeline may: the edges drift."""
    boxes = tv_tensors.BoundingBoxes(torch.tensor(xyxy, dtype=torch.float32), format="XYXY", canvas_size=canvas)
    cxcywh = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.CXCYWH)
    return cxcywh, TF.convert_bounding_box_format(cxcywh, new_format=XYXY)


@pytest.mark.parametrize("per", ["batch", "pair"])
def test_float_drift_past_the_edge_is_clipped_beyond_the_tolerance_refused(per):
    exact = [[10.0, 33.67, 640.0, 480.0], [10.0, 20.0, 300.0, 200.0]]
    cxcywh, back = _round_tripped(exact)
    assert float(back[0, 3]) == pytest.approx(480.0000305, abs=1e-7)  # the drift of the issue
    images = [torch.full((3, 480, 640), 50 * k, dtype=torch.uint8) for k in range(3)]
    targets = [{"boxes": cxcywh.clone(), "labels": torch.tensor([1, 2])} for _ in range(3)]
    mix = BatchMix("deit", per=per)
    out_images, out_targets = mix(images, targets, generator=gen(1))
    for target in out_targets:
        assert target["boxes"].format == tv_tensors.BoundingBoxFormat.CXCYWH
        xyxy = TF.convert_bounding_box_format(target["boxes"], new_format=XYXY).as_subclass(torch.Tensor)
        assert len(xyxy) and (xyxy[:, 2] <= 640 + 1e-4).all() and (xyxy[:, 3] <= 480 + 1e-4).all()
    # The drifted input equals, pair by pair, the exact box on the edge through the core.
    exact_targets = [{"boxes": torch.tensor(exact), "labels": torch.tensor([1, 2])} for _ in range(3)]
    ref_images, ref_targets = mix.apply(images, exact_targets, mix.last_params)
    for got, ref in zip(out_targets, ref_targets):
        got = TF.convert_bounding_box_format(got["boxes"], new_format=XYXY).as_subclass(torch.Tensor)
        torch.testing.assert_close(got, ref["boxes"], rtol=0, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(out_images, ref_images))
    # The core clips the same drift: numpy and torch samples.
    a = {"image": np.zeros((480, 640, 3), np.uint8), "boxes": back.as_subclass(torch.Tensor).numpy(),
         "labels": np.array([1, 2])}
    cut = F.cutmix(a, a, (0, 0, 32, 32))
    assert cut["boxes"][:, 2].max() == 640 and cut["boxes"][:, 3].max() == 480
    assert F.mixup(to_torch_sample(a), to_torch_sample(a), 0.5)["boxes"][:, 3].max() == 480
    # Beyond 1e-3 px it is an error, as before.
    far = [{"boxes": torch.tensor([[10.0, 20.0, 640.002, 200.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    message = ("targets[0]['boxes'][0] must lie inside the 640x480 canvas of images[0] (0 <= x <= 640, 0 <= y <= 480), "
               "got [10.0, 20.0, 640.0020141601562, 200.0]")
    with pytest.raises(ValueError, match=re.escape(message)):
        mix(images[:2], far, generator=gen(1))
    a["boxes"] = np.array([[-0.002, 20.0, 300.0, 200.0], [1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError, match=re.escape("a['boxes'][0] must lie inside the 640x480 canvas")):
        F.cutmix(a, a, (0, 0, 32, 32))


def to_torch_sample(sample):
    return {"image": torch.from_numpy(sample["image"]).permute(2, 0, 1).contiguous(),
            "boxes": torch.from_numpy(sample["boxes"]), "labels": torch.from_numpy(sample["labels"])}


def test_box_keys_and_generator_errors():
    images, targets = _two()
    mix = BatchMix("deit", box_keys=["ids"])
    targets[0]["ids"] = torch.tensor([1])
    message = "box_keys names 'ids' but targets[1]['ids'] is missing or not a tensor"
    with pytest.raises(ValueError, match=re.escape(message)):
        mix(images, targets, generator=gen(0))
    targets[1]["ids"] = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=re.escape("targets[1]['ids'] must have one row per box (1), got 2 rows")):
        mix(images, targets, generator=gen(0))
    targets[1]["ids"] = torch.tensor([[1, 2]])
    message = "targets[1]['ids'] has rows of shape (2,) but targets[0]['ids'] has ()"
    with pytest.raises(ValueError, match=re.escape(message)):
        mix(images, targets, generator=gen(0))
    with pytest.raises(TypeError, match=re.escape("generator must be a torch.Generator, got Generator")):
        mix(images, targets, generator=np.random.default_rng(0))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"per": "elem"}, ValueError, "per must be 'batch' or 'pair', got 'elem'"),
    ({"box_keys": "ids"}, TypeError, "box_keys must be a sequence of key names, got the string 'ids'"),
    ({"box_keys": ["ids", "weights"]}, ValueError, "box_keys must not name ['weights']: they are handled by BatchMix"),
    ({"generator": 0}, TypeError, "generator must be a torch.Generator, got int"),
    ({"fill": float("nan")}, ValueError, "fill must be a finite number, got nan"),
    ({"size_divisible": 0}, ValueError, "size_divisible must be an int >= 1, got 0"),
])
def test_constructor_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        BatchMix("deit", **kwargs)


def test_replay_and_collate_errors():
    images, targets = _two()
    mix = BatchMix("deit", generator=gen(0))
    params = mix.make_params(2, (8, 10))
    with pytest.raises(TypeError, match="params must be a BatchParams, got dict"):
        mix.apply(images, targets, params.to_dict())
    with pytest.raises(ValueError, match=re.escape("params are for a batch of 3 images, got 2")):
        mix.apply(images, targets, mix.make_params(3, (8, 10)))
    message = "params were drawn for canvas (8, 8) but the batch's padded canvas is (8, 10)"
    with pytest.raises(ValueError, match=re.escape(message)):
        mix.apply(images, targets, mix.make_params(2, (8, 8)))
    cut = BatchParams([1, 0], [2, 2], [0.5, 0.5], [[0, 0, 5, 8], [0, 0, 5, 8]], (8, 10))
    with pytest.raises(ValueError, match="params ask for mode 'cutmix' but recipe 'mixup' has no 'cutmix' section"):
        BatchMix("mixup").apply(images, targets, cut)
    with pytest.raises(TypeError, match="mix must be a BatchMix, got RandomMix"):
        from detmix import RandomMix
        MixCollate(RandomMix("deit"), generator=gen(0))
    with pytest.raises(TypeError, match=re.escape("generator must be a torch.Generator or None, got int")):
        MixCollate(BatchMix("deit"), generator=0)
    with pytest.raises(TypeError, match=re.escape("batch[1] must be an (image, target) pair, got Tensor")):
        MixCollate(mix)([(images[0], targets[0]), images[1]])
