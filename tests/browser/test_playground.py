"""The playground page at ``/`` in headless Chromium, against a real uvicorn server.

The browser is Debian's ``chromium`` (``apt-get install -y chromium``; the Makefile installs it),
driven by Python Playwright; Playwright's own browser download is never used. The server is
``python -m detmix_service`` on a free 127.0.0.1 port with the embedded synthetic dataset (in a
temporary folder) and, when the coco-mini photographs are there, those too.

For each dataset the test picks it and a recipe in the page, clicks Mix, takes the API's answer
as the browser received it, and checks what the page shows against it: one canvas per returned
image, at the image's size, showing the image's own pixels (outside the drawn boxes); one drawn
box per returned annotation, on that image, in the colour of its source (own or partner); the
status line's counts. A screenshot goes to the test's tmp folder and, with
``DETMIX_UPDATE_SCREENSHOTS=1``, the synthetic one to ``docs/images/playground.png`` (the
coco-mini photographs carry their own licences and are not copied into the project).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"
CHROMIUM = Path(os.environ.get("DETMIX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
SCREENSHOT = REPO / "docs" / "images" / "playground.png"
# The page's colours for boxes from the image itself and from its partner (static/index.html).
OWN, PARTNER = (0xFF, 0x8C, 0x00), (0x1E, 0x90, 0xFF)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service under uvicorn; SIGTERM at the end must give exit status 0."""
    tmp = tmp_path_factory.mktemp("playground-server")
    port = _free_port()
    datasets = {}
    if (COCO_MINI / "annotations" / "instances_val2017.json").is_file():
        datasets["coco-mini"] = {"annotations": str(COCO_MINI / "annotations" / "instances_val2017.json"),
                                 "images": str(COCO_MINI / "val2017")}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "service"), os.environ.get("PYTHONPATH")) if p),
        "DETMIX_DATA_DIR": str(tmp / "synthetic"),
        "DETMIX_DATASETS": json.dumps(datasets),
        "DETMIX_LOG_LEVEL": "warning",
    }
    for name in ("DETMIX_SETTINGS_FILE", "DETMIX_API_KEYS", "DETMIX_HOST", "DETMIX_PORT", "DETMIX_WORKERS"):
        env.pop(name, None)
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "detmix_service", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while _get(f"{url}/readyz") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the service did not become ready (exit status {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        # The exit status after SIGTERM is tests/service's business; here the server just goes.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"the service did not stop within 30 s of SIGTERM:\n{log.read_text()}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the playground test drives Debian's chromium package. "
            "Install it with `sudo apt-get install -y chromium` (make test does), or point DETMIX_CHROMIUM "
            "at a Chromium binary. Do not run `playwright install`.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# What the page drew, read back in the page: every canvas with its size, its data attributes,
# the share of its pixels equal to the returned image's outside the drawn boxes, and for every
# annotation of the answer whether its box's outline carries its colour.
CHECK_CANVASES = """
async ([answer, own, partner]) => {
  const near = (d, i, c) => Math.abs(d[i] - c[0]) <= 40 && Math.abs(d[i + 1] - c[1]) <= 40 && Math.abs(d[i + 2] - c[2]) <= 40;
  const out = [];
  const canvases = [...document.querySelectorAll("#results canvas")];
  for (const canvas of canvases) {
    const id = Number(canvas.dataset.imageId);
    const image = answer.images.find((im) => im.id === id);
    const row = { id, width: canvas.width, height: canvas.height, boxesAttr: Number(canvas.dataset.boxes), crowdAttr: Number(canvas.dataset.crowd),
                  naturalWidth: 0, naturalHeight: 0, sameOutside: 0, outlined: [] };
    out.push(row);
    if (!image) continue;
    const element = new Image();
    element.src = `data:image/${image.format};base64,${image.data}`;
    await element.decode();
    row.naturalWidth = element.naturalWidth; row.naturalHeight = element.naturalHeight;
    const ref = document.createElement("canvas");
    ref.width = canvas.width; ref.height = canvas.height;
    ref.getContext("2d").drawImage(element, 0, 0);
    const a = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const b = ref.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const anns = answer.annotations.filter((ann) => ann.image_id === id);
    // Pixels away from every box (12 px margin: strokes, labels) and from the cut outline.
    const covered = new Uint8Array(canvas.width * canvas.height);
    const mark = (x1, y1, x2, y2) => {
      for (let y = Math.max(0, Math.floor(y1)); y < Math.min(canvas.height, Math.ceil(y2)); y++)
        covered.fill(1, y * canvas.width + Math.max(0, Math.floor(x1)), y * canvas.width + Math.min(canvas.width, Math.ceil(x2)));
    };
    for (const ann of anns) {
      const [x, y, w, h] = ann.bbox;
      mark(x - 4, y - 16, x + w + 4, y + 4);          // top edge and label
      mark(x - 4, y - 4, x + 4, y + h + 4);           // left
      mark(x + w - 4, y - 4, x + w + 4, y + h + 4);   // right
      mark(x - 4, y + h - 4, x + w + 4, y + h + 4);   // bottom
      mark(x - 4, y - 16, x + 200, y + 4);            // a long label
    }
    const cut = image.mix.params.cut_box;
    if (cut) {
      const [x1, y1, x2, y2] = cut;
      mark(x1 - 2, y1 - 2, x2 + 2, y1 + 3); mark(x1 - 2, y2 - 3, x2 + 2, y2 + 2);
      mark(x1 - 2, y1 - 2, x1 + 3, y2 + 2); mark(x2 - 3, y1 - 2, x2 + 2, y2 + 2);
    }
    let same = 0, total = 0;
    for (let p = 0; p < covered.length; p++) {
      if (covered[p]) continue;
      total++;
      const i = 4 * p;
      if (a[i] === b[i] && a[i + 1] === b[i + 1] && a[i + 2] === b[i + 2]) same++;
    }
    row.sameOutside = total ? same / total : 1;
    for (const ann of anns) {
      const colour = ann.source_image_id === id ? own : partner;
      const [x, y, w, h] = ann.bbox;
      let hit = false;
      const probe = (px, py) => {
        for (let dy = -1; dy <= 1 && !hit; dy++) for (let dx = -1; dx <= 1 && !hit; dx++) {
          const qx = Math.floor(px) + dx, qy = Math.floor(py) + dy;
          if (qx >= 0 && qy >= 0 && qx < canvas.width && qy < canvas.height && near(a, 4 * (qy * canvas.width + qx), colour)) hit = true;
        }
      };
      for (let t = 0; t <= 1 && !hit; t += 1 / 16) {
        probe(x + t * w, y); probe(x + t * w, y + h); probe(x, y + t * h); probe(x + w, y + t * h);
      }
      row.outlined.push({ id: ann.id, hit });
    }
  }
  return out;
}
"""


def _mix_in_page(page: Any, url: str, dataset: str, recipe: str, batch_size: int, seed: int) -> dict[str, Any]:
    page.goto(url)
    page.wait_for_selector("#status[data-state=ready]", timeout=15_000)
    datasets = page.eval_on_selector_all("#dataset option", "options => options.map((o) => o.value)")
    recipes = page.eval_on_selector_all("#recipe option", "options => options.map((o) => o.value)")
    assert dataset in datasets and recipe in recipes, (datasets, recipes)
    page.select_option("#dataset", dataset)
    page.select_option("#recipe", recipe)
    page.fill("#batch-size", str(batch_size))
    page.fill("#seed", str(seed))
    with page.expect_response(lambda r: r.url.endswith(f"/v1/datasets/{dataset}/batch")) as answer_info:
        page.click("#mix")
    response = answer_info.value
    assert response.status == 200, response.text()
    answer = response.json()
    page.wait_for_selector("#status[data-state=done]", timeout=30_000)
    return answer


@pytest.mark.parametrize("dataset", ["synthetic", "coco-mini"])
def test_playground_draws_the_returned_images_and_boxes(browser, server, dataset, tmp_path):
    if dataset == "coco-mini" and not (COCO_MINI / "val2017").is_dir():
        pytest.skip(f"real photographs not found at {COCO_MINI} (the shared coco-mini slice)")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(f"console: {message.text}")
            if message.type == "error" and not message.text.startswith("Failed to load resource") else None)
    # Failed loads by URL (the console message does not name it): none, the favicon probe included
    # (the page names its icon, so the browser does not ask for /favicon.ico and log a 404).
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    batch_size = 6
    answer = _mix_in_page(page, server, dataset, "cutmix", batch_size=batch_size, seed=3)

    # The answer itself: a mixed batch with boxes.
    assert len(answer["images"]) == batch_size
    assert answer["annotations"], "the API returned no annotations to draw"
    assert {p["mix"]["params"]["mode"] for p in answer["images"]} <= {"cutmix", "none"}

    if dataset == "coco-mini":  # this draw holds crowd regions: drawn dashed, captioned "crowd", no weight
        assert any(a["iscrowd"] for a in answer["annotations"])
    rows = page.evaluate(CHECK_CANVASES, [answer, list(OWN), list(PARTNER)])
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == len(answer["images"]) and set(by_id) == {im["id"] for im in answer["images"]}
    for image in answer["images"]:
        row = by_id[image["id"]]
        own = [a for a in answer["annotations"] if a["image_id"] == image["id"]]
        expected = sum(1 for a in own if not a["iscrowd"])  # crowd regions are drawn, not counted as boxes
        crowd = len(own) - expected
        assert (row["width"], row["height"]) == (image["width"], image["height"]) != (0, 0), row
        assert (row["naturalWidth"], row["naturalHeight"]) == (image["width"], image["height"]), row
        assert row["sameOutside"] > 0.98, f"image {image['id']}: the canvas does not show the returned image ({row})"
        assert row["boxesAttr"] == expected and row["crowdAttr"] == crowd and len(row["outlined"]) == len(own), row
        missing = [o["id"] for o in row["outlined"] if not o["hit"]]
        assert not missing, f"image {image['id']}: no outline in the box colour for annotations {missing}"
    assert sum(len(r["outlined"]) for r in rows) == len(answer["annotations"])

    status = page.inner_text("#status")
    objects = sum(1 for a in answer["annotations"] if not a["iscrowd"])
    assert f"Mixed {batch_size} images" in status and f"{objects} boxes kept" in status, status
    assert not errors, errors

    shot = tmp_path / f"playground-{dataset}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if dataset == "synthetic" and os.environ.get("DETMIX_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    page.close()


def _offline_page(browser: Any, errors: list[str]) -> Any:
    """A page that may load from 127.0.0.1 only: any other request is aborted and recorded; page
    errors, console errors (CSP violations among them) and failed loads are recorded too."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1:", "data:")):
            route.continue_()
        else:
            errors.append(f"blocked: {url}")
            route.abort()

    page.route("**/*", only_loopback)
    return page


def test_playground_clears_the_previous_images_after_a_failed_request(browser, server):
    errors: list[str] = []
    page = _offline_page(browser, errors)
    _mix_in_page(page, server, "synthetic", "cutmix", batch_size=3, seed=1)
    assert page.locator("#results canvas").count() == 3
    # The next batch fails as an overloaded server answers it.
    failure = {"detail": [{"loc": [], "msg": "4 batches are in flight", "type": "overloaded"}]}
    page.route("**/v1/datasets/synthetic/batch", lambda route: route.fulfill(
        status=429, content_type="application/json", body=json.dumps(failure)))
    page.fill("#seed", "2")
    page.click("#mix")
    page.wait_for_selector("#status[data-state=error]", timeout=15_000)
    assert page.inner_text("#status") == "Mixing failed: 429: 4 batches are in flight"
    assert page.locator("#results canvas").count() == 0  # no image of the previous batch beside the failure
    assert errors == [f"429 {server}/v1/datasets/synthetic/batch",
                      "console: Failed to load resource: the server responded with a status of 429 (Too Many Requests)"]
    page.close()


def test_the_api_page_renders_with_no_network_beyond_loopback(browser, server):
    # Swagger UI's script and style come from the service (they came from a CDN: a blank page offline).
    errors: list[str] = []
    page = _offline_page(browser, errors)
    page.goto(server + "/docs")
    page.wait_for_selector(".swagger-ui .information-container .title", timeout=30_000)
    assert "detmix" in page.inner_text(".swagger-ui .information-container .title")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map((n) => n.textContent)")
    assert {"/v1/mix", "/v1/datasets/{name}/batch", "/healthz"} <= {p.replace("\u200b", "") for p in paths}, paths
    assert not errors, errors
    page.close()

