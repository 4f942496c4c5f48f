"""schemathesis against the OpenAPI schema of a live server: no request built from the schema,
valid or not, gets a 5xx, a status code the schema does not list, or an answer off its schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from schemathesis.generation import GenerationMode

from .servicekit import live_server

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir):
    # Small limits, so that what the generator builds is refused quickly rather than computed.
    server_settings = {"data_dir": data_dir, "max_batch_images": 4, "max_image_pixels": 65536,
                       "max_batch_pixels": 262144, "max_body_bytes": 1_000_000, "max_in_flight": 64}
    with live_server(tmp_path_factory.mktemp("fuzz"), server_settings) as live:
        yield live
        assert live.stop() == 0
    log = live.output()
    assert "Traceback" not in log and '" 500' not in log, log[-3000:]


def operations(url: str) -> list:
    return [result.ok() for result in schemathesis.openapi.from_url(f"{url}/openapi.json").get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_schema_holds(server, mode):
    tested = []
    for operation in operations(server.url):
        if mode is GenerationMode.NEGATIVE and not (len(operation.body) or len(operation.path_parameters)):
            continue  # nothing to get wrong: GET /healthz, /metrics...

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)

        run()
        tested.append(operation.label)
    assert {"POST /v1/mix", "POST /v1/datasets/{name}/batch"} <= set(tested)
