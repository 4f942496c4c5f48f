"""Mode contracts through POST /v1/mix: a mode that reads the partner to draw gets the whole
partner (its boxes too), so SaliencyMix's ``centre: object`` centres each image's cut on one of
its partner's objects."""

from __future__ import annotations

import pytest

from .servicekit import coco_batch

# Small objects far apart, different in each image: (x, y, w, h) COCO boxes on an 80x60 canvas.
OBJECTS = {
    1: [[4.0, 4.0, 6.0, 6.0], [66.0, 46.0, 8.0, 8.0]],
    2: [[66.0, 4.0, 8.0, 6.0], [4.0, 46.0, 6.0, 8.0]],
}


def centres(image_id: int) -> list[tuple[float, float]]:
    return [(x + w / 2, y + h / 2) for x, y, w, h in OBJECTS[image_id]]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_saliencymix_object_centre_uses_the_partners_boxes(client, seed):
    body = coco_batch(2, height=60, width=80)
    body["annotations"] = [
        {"id": 10 * image_id + k, "image_id": image_id, "category_id": 1, "bbox": bbox, "iscrowd": 0}
        for image_id, boxes in OBJECTS.items() for k, bbox in enumerate(boxes)
    ]
    body |= {"recipe": {"saliencymix": {"centre": "object", "lam_clamp": [0.95, 0.95]}}, "seed": seed}
    response = client.post("/v1/mix", json=body)
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 2
    for image in images:
        mix = image["mix"]
        assert mix["partner_id"] != mix["image_id"]
        params = mix["params"]
        assert params["mode"] == "saliencymix"
        x1, y1, x2, y2 = params["cut_box"]
        assert any(x1 <= cx <= x2 and y1 <= cy <= y2 for cx, cy in centres(mix["partner_id"])), (mix, params)
        # and not on the image's own objects (they are far from the partner's)
        assert not any(x1 <= cx <= x2 and y1 <= cy <= y2 for cx, cy in centres(mix["image_id"])), (mix, params)
