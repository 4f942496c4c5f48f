"""The app around the batches: health and readiness, API keys, CORS, metrics, catalog, settings."""

from __future__ import annotations

import re

import pytest

from detmix_service import Settings, load_settings
from .servicekit import coco_batch, error_locs

KEY = "s3cret-key-1"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))).strip(",") == wanted:
            return float(match.group(2))
    raise KeyError(f"{name}{{{wanted}}} not in the metrics")


def test_health_is_alive_and_readiness_follows_the_lifespan(make_client):
    test_client = make_client()
    assert test_client.get("/healthz").json()["status"] == "ok"
    assert test_client.get("/readyz").status_code == 503  # lifespan not run: nothing loaded
    with test_client:
        ready = test_client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
    lifecycle = test_client.app.state.runtime.lifecycle
    assert lifecycle.state.value == "draining"
    answer = test_client.get("/readyz")
    assert answer.status_code == 503 and answer.json()["status"] == "draining" and answer.headers["Retry-After"] == "1"


def test_catalog(client):
    recipes = {recipe["name"]: recipe for recipe in client.get("/v1/recipes").json()}
    assert set(recipes) == {"copy_paste", "cutmix", "cutout", "deit", "fmix", "mixup", "resizemix", "saliencymix"}
    assert recipes["deit"]["switch_prob"] == 0.5 and recipes["fmix"]["fmix"]["decay"] == 3.0
    (synthetic,) = client.get("/v1/datasets").json()
    assert synthetic["name"] == "synthetic" and synthetic["images"] == 48 and synthetic["masks"] is True
    assert [c["name"] for c in synthetic["categories"]] == ["square", "disc", "triangle", "star"]
    assert synthetic["excluded_images"] == synthetic["excluded_annotations"] == 0


def test_recipes_dir_adds_to_the_packaged_recipes(make_client, tmp_path):
    (tmp_path / "gentle.yaml").write_text("description: gentle\nmixup: {alpha: 0.2}\n")
    (tmp_path / "mixup.yaml").write_text("description: a retuned mixup\nmixup: {alpha: 3.0}\n")
    with make_client(recipes_dir=tmp_path) as test_client:
        recipes = {recipe["name"]: recipe for recipe in test_client.get("/v1/recipes").json()}
    assert sorted(recipes) == ["copy_paste", "cutmix", "cutout", "deit", "fmix", "gentle", "mixup", "resizemix", "saliencymix"]
    assert recipes["gentle"]["mixup"]["alpha"] == 0.2 and recipes["mixup"]["mixup"]["alpha"] == 3.0


@pytest.fixture(scope="module")
def keyed(make_client):
    with make_client(api_keys=[KEY, "another-key-2"]) as test_client:
        yield test_client


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong-key"}, {"X-API-Key": KEY + "x"}, {"X-API-Key": ""}])
def test_api_key_required_when_configured(keyed, headers):
    for method, path in (("GET", "/v1/recipes"), ("GET", "/v1/datasets"), ("POST", "/v1/mix"),
                         ("POST", "/v1/datasets/synthetic/batch")):
        response = keyed.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (method, path)
        assert error_locs(response) == [["header", "x-api-key"]] and response.headers["WWW-Authenticate"] == "ApiKey"


def test_right_api_key_and_open_health(keyed):
    for key in (KEY, "another-key-2"):
        assert keyed.post("/v1/mix", json=coco_batch(2), headers={"X-API-Key": key}).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/"):
        assert keyed.get(path).status_code == 200, path
    assert 'detmix_rejections_total{reason="unauthorized"}' in keyed.get("/metrics").text


@pytest.mark.parametrize("given", [KEY, "another-key-2", "wrong-key"])
def test_api_keys_are_compared_in_constant_time_against_every_key(keyed, monkeypatch, given):
    """No early exit that would tell by its timing which key (or how much of it) matched: every
    configured key goes through ``hmac.compare_digest``, for a right key and for a wrong one."""
    import detmix_service.deps as deps

    compared = []
    real = deps.hmac.compare_digest
    monkeypatch.setattr(deps.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    status = keyed.get("/v1/recipes", headers={"X-API-Key": given}).status_code
    assert status == (401 if given == "wrong-key" else 200)
    assert sorted(b for _, b in compared) == sorted([KEY.encode(), b"another-key-2"])
    assert {a for a, _ in compared} == {given.encode()}


def test_api_keys_from_the_environment(monkeypatch, data_dir):
    monkeypatch.setenv("DETMIX_API_KEYS", "first-key-1, second-key-2")
    assert [k.get_secret_value() for k in Settings(data_dir=data_dir).api_keys] == ["first-key-1", "second-key-2"]
    monkeypatch.setenv("DETMIX_API_KEYS", '["json-key-11"]')
    assert [k.get_secret_value() for k in Settings().api_keys] == ["json-key-11"]
    assert "json-key-11" not in repr(Settings())
    with pytest.raises(ValueError, match="at least 8 characters"):
        Settings(api_keys=["short"])


def test_cors_is_closed_by_default(client):
    preflight = client.options("/v1/mix", headers={"Origin": "https://evil.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in client.get("/v1/recipes", headers={"Origin": "https://x.example"}).headers


def test_cors_opens_to_the_configured_origins(make_client):
    with make_client(cors_origins=["https://app.example"]) as test_client:
        allowed = test_client.options("/v1/mix", headers={"Origin": "https://app.example",
                                                          "Access-Control-Request-Method": "POST"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = test_client.get("/v1/recipes", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_metrics_count_requests_images_and_rejections(make_client):
    with make_client() as test_client:
        answer = test_client.post("/v1/mix", json=coco_batch(3) | {"recipe": "cutmix"}).json()
        assert test_client.post("/v1/mix", json={"images": []}).status_code == 422
        assert test_client.get("/nowhere").status_code == 404
        text = test_client.get("/metrics").text
    modes = [image["mix"]["params"]["mode"] for image in answer["images"]]
    assert metric(text, "detmix_images_mixed_total", mode="cutmix") == modes.count("cutmix") == 3
    assert metric(text, "detmix_http_requests_total", method="POST", route="/v1/mix", status="200") == 1
    assert metric(text, "detmix_http_requests_total", method="POST", route="/v1/mix", status="422") == 1
    assert metric(text, "detmix_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert metric(text, "detmix_rejections_total", reason="invalid_input") == 1
    assert metric(text, "detmix_http_request_duration_seconds_count", method="POST", route="/v1/mix") == 2
    assert metric(text, "detmix_batches_in_flight") == 0
    # The exposition parses with Prometheus' own parser; the latency histogram is cumulative.
    from prometheus_client.parser import text_string_to_metric_families

    (latency,) = [f for f in text_string_to_metric_families(text) if f.name == "detmix_http_request_duration_seconds"]
    assert latency.type == "histogram"
    mix = [s for s in latency.samples if s.labels.get("route") == "/v1/mix" and s.labels.get("method") == "POST"]
    buckets = sorted((float(s.labels["le"]), s.value) for s in mix if s.name.endswith("_bucket"))
    counts = [count for _, count in buckets]
    assert len(buckets) == 14 and buckets[-1] == (float("inf"), 2) and counts == sorted(counts)
    assert 0 < next(s.value for s in mix if s.name.endswith("_sum")) < 60


def test_two_apps_count_apart(make_client):
    with make_client() as first, make_client() as second:
        first.post("/v1/mix", json=coco_batch(2))
        assert "detmix_images_mixed_total{" in first.get("/metrics").text
        assert "detmix_images_mixed_total{" not in second.get("/metrics").text


def test_errors_have_one_shape(client):
    unknown = client.get("/v1/nothing")
    assert unknown.status_code == 404 and unknown.json() == {"detail": [{"loc": [], "msg": "Not Found", "type": "http"}]}
    wrong_method = client.get("/v1/mix")
    assert wrong_method.status_code == 405 and wrong_method.json()["detail"][0]["type"] == "http"


def test_playground_page(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="dataset"', 'id="recipe"', 'id="seed"', 'id="batch-size"', 'id="api-key"', 'id="mix"',
                    'id="status"', 'id="results"', 'src="/static/playground.js"', 'href="/static/playground.css"'):
        assert element in page.text
    script = client.get("/static/playground.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "/v1/datasets/" in script.text
    assert client.get("/static/playground.css").headers["content-type"].startswith("text/css")
    missing = client.get("/static/other.js")
    assert missing.status_code == 404 and missing.json()["detail"][0]["loc"] == ["path", "name"]


def test_settings_file_with_environment_override(tmp_path, monkeypatch):
    path = tmp_path / "settings.yaml"
    path.write_text("max_in_flight: 7\nport: 9001\ndatasets:\n  coco: {annotations: a.json, images: img}\n")
    monkeypatch.setenv("DETMIX_PORT", "9002")
    settings = load_settings(path)
    assert (settings.max_in_flight, settings.port) == (7, 9002)
    assert str(settings.datasets["coco"].images) == "img" and settings.datasets["coco"].masks is True
    monkeypatch.setenv("DETMIX_SETTINGS_FILE", str(path))
    assert load_settings().max_in_flight == 7
    path.write_text("max_in_flight: 0\n")
    with pytest.raises(ValueError, match="max_in_flight"):
        load_settings(path)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_settings(path)


def test_unknown_settings_are_refused(data_dir):
    with pytest.raises(ValueError, match="max_inflight"):
        Settings(max_inflight=3)


def test_a_broken_dataset_stops_the_startup(make_client, tmp_path):
    missing = tmp_path / "missing.json"
    test_client = make_client(datasets={"broken": {"annotations": missing, "images": tmp_path}})
    with pytest.raises(Exception, match="dataset 'broken'"):
        with test_client:
            pass
    assert not test_client.app.state.runtime.lifecycle.ready


def test_the_embedded_dataset_name_cannot_be_taken(make_client, tmp_path):
    (tmp_path / "a.json").write_text('{"images": [], "annotations": [], "categories": []}')
    test_client = make_client(datasets={"synthetic": {"annotations": tmp_path / "a.json", "images": tmp_path}})
    with pytest.raises(Exception, match="dataset name 'synthetic' is taken by the embedded dataset; choose another"):
        with test_client:
            pass
    assert not test_client.app.state.runtime.lifecycle.ready


def test_openapi_documents_both_bodies_of_mix(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/mix"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    components = schema["components"]["schemas"]
    assert {"MixRequest", "MixUpload", "MixResponse", "ErrorResponse"} <= set(components)
    assert components["MixRequest"]["additionalProperties"] is False
    responses = schema["paths"]["/v1/mix"]["post"]["responses"]
    assert {"200", "401", "413", "415", "422", "429", "504"} <= set(responses)
    assert "X-API-Key" in str(schema["components"]["securitySchemes"])
