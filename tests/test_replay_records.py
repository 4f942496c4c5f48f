"""``MixParams`` logged by earlier code replay to the same output, bit for bit: the records in
``tests/data/replay_records.json`` (recipe, pair, params and a digest of the output) were written
before the mixing modes became units of a registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detmix import MixParams, Recipe, mix_pair
from replay_samples import digest, samples

RECORDS = json.loads((Path(__file__).parent / "data" / "replay_records.json").read_text())["records"]
SAMPLES = samples()


@pytest.mark.parametrize("record", RECORDS, ids=[f"{k}-{r['params']['mode']}" for k, r in enumerate(RECORDS)])
def test_a_logged_record_replays_to_the_same_output(record):
    a, b = dict(SAMPLES[record["a"]]), dict(SAMPLES[record["b"]])
    if not record["masks"]:
        for s in (a, b):
            del s["masks"], s["crowd_mask"]
    out = mix_pair(a, b, MixParams.from_dict(record["params"]), Recipe.model_validate(record["recipe"]))
    assert digest(out) == record["digest"]
