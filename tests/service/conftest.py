"""Fixtures of the service tests: apps built from test settings, a cached synthetic dataset.
(``coco_mini``, the real photographs, comes from ``tests/conftest.py``.)"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from detmix.synthetic import default_dataset
from detmix_service import Settings, create_app

with warnings.catch_warnings():
    # starlette >= 1.x asks for the httpx2 package; httpx still works (and is what detmix.client uses).
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded synthetic dataset, generated once for the whole session."""
    return default_dataset(tmp_path_factory.mktemp("synthetic") / "data").root


@pytest.fixture(scope="session")
def make_settings(data_dir: Path) -> Callable[..., Settings]:
    """Settings for tests: the session's synthetic dataset, small limits that tests override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": data_dir, "worker_threads": 2, "max_in_flight": 4}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def make_client(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """``with make_client(**settings) as client``: a TestClient of a fresh app (lifespan run)."""

    def make(**overrides: Any) -> TestClient:
        return TestClient(create_app(make_settings(**overrides)))

    return make


@pytest.fixture(scope="module")
def client(make_client: Callable[..., TestClient]) -> Iterator[TestClient]:
    with make_client() as test_client:
        yield test_client
