"""Service settings: environment variables ``DETMIX_*``, optionally a YAML/JSON file.

Every field is an environment variable of the same name with the prefix ``DETMIX_``
(``max_body_bytes`` is ``DETMIX_MAX_BODY_BYTES``); lists and mappings are JSON
(``DETMIX_DATASETS='{"coco": {"annotations": "/data/ann.json", "images": "/data/img"}}'``), API
keys may also be comma-separated. :meth:`Settings.from_file` reads a file and lets the
environment override it; :func:`load_settings` reads the file named by ``$DETMIX_SETTINGS_FILE``
when there is one.

``DETMIX_DATA_DIR`` and ``DETMIX_RECIPES_DIR`` mean what they mean to the detmix core: where the
synthetic dataset is cached and a folder whose recipes are added to the packaged ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["SYNTHETIC", "DatasetConfig", "Settings", "load_settings"]

#: The name of the embedded synthetic dataset, always served.
SYNTHETIC = "synthetic"


class DatasetConfig(BaseModel):
    """One COCO dataset the server mixes batches from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    annotations: Path = Field(description="COCO instances JSON")
    images: Path = Field(description="folder the images' file_name are relative to")
    masks: bool = Field(default=True, description="mix instance masks (segmentation) with the boxes")


class Settings(BaseSettings):
    """Everything the service can be told; the defaults suit one machine and loopback."""

    model_config = SettingsConfigDict(env_prefix="DETMIX_", extra="forbid", frozen=True)

    # Serving (read by ``detmix serve`` / ``python -m detmix_service``).
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    graceful_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    header_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0, description="a request's head must arrive within this, else 408 and the connection closes"
    )
    drain_s: Annotated[float, Field(ge=0, le=600)] = Field(
        default=0.0, description="after SIGTERM, answer /readyz 503 this long while still serving, then stop"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # Data.
    datasets: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], DatasetConfig] = Field(
        default_factory=dict, description="name -> COCO annotation file and image folder"
    )
    allow_empty_datasets: bool = Field(
        default=False, description="start even when a configured dataset serves no image (it is not offered)"
    )
    data_dir: Path | None = Field(default=None, description="cache of the synthetic dataset (detmix default)")
    recipes_dir: Path | None = Field(default=None, description="folder of more named recipes, added to detmix's own")

    # Security.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted X-API-Key values; empty: no key needed"
    )
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty: CORS off")
    api_docs: bool = Field(
        default=True, description="serve /docs, /redoc and /openapi.json (with their assets, no CDN); off: 404"
    )
    server_header: bool = Field(default=False, description="send uvicorn's 'server: uvicorn' header")

    # Limits.
    max_body_bytes: Annotated[int, Field(ge=1024, le=2**31)] = 64 * 2**20
    max_batch_images: Annotated[int, Field(ge=1, le=256)] = 32
    max_image_pixels: Annotated[int, Field(ge=1, le=Image.MAX_IMAGE_PIXELS)] = 4096 * 4096
    max_batch_pixels: Annotated[int, Field(ge=1, le=2**32)] = 64 * 2**20
    max_annotations_per_image: Annotated[int, Field(ge=0, le=100_000)] = 1000
    max_mask_pixels: Annotated[int, Field(ge=1, le=2**34)] | None = Field(
        default=None,
        description="sum over annotations with a segmentation of their image's pixels; none: what the memory "
        "budget allows",
    )
    max_batch_memory_bytes: Annotated[int, Field(ge=16 * 2**20, le=2**40)] = Field(
        default=1024 * 2**20,
        description="server memory one batch may take, estimated before anything is decoded (detmix_service.budget); "
        "the limits on mask pixels, polygon points and JSON values follow from it",
    )
    max_in_flight: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=4, description="batches admitted at once, once their body is in (queued for a thread or running); "
        "more get 429"
    )
    max_uploads: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=16, description="batch bodies received at once (before admission); more get 429"
    )
    min_upload_bytes_per_s: Annotated[int, Field(ge=0, le=2**30)] = Field(
        default=16 * 1024, description="a body must keep this pace after upload_grace_s, else 408; 0: no minimum"
    )
    upload_grace_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0, description="seconds a body may take before its pace counts"
    )
    worker_threads: Annotated[int, Field(ge=1, le=256)] = Field(
        default_factory=lambda: os.cpu_count() or 1, description="threads doing image work"
    )
    request_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0, description="deadline of one batch request, body upload included; then 504"
    )
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 1

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [key.strip() for key in text.split(",") if key.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _non_empty_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            if len(key.get_secret_value()) < 8:
                raise ValueError("every API key must have at least 8 characters")
        return value

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Settings:
        """Settings from a YAML (or JSON) file; ``DETMIX_*`` variables override its values."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"settings file {str(path)!r} cannot be read: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"settings file {str(path)!r} must hold a mapping, got {type(data).__name__}")
        from_env = cls()
        return cls(**{**data, **{name: getattr(from_env, name) for name in from_env.model_fields_set}})


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """The settings of this process: ``path``, else ``$DETMIX_SETTINGS_FILE``, overridden by the
    environment; only the environment when neither names a file."""
    path = path or os.environ.get("DETMIX_SETTINGS_FILE")
    return Settings.from_file(path) if path else Settings()
