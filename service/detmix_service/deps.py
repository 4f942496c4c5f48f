"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from detmix_service.errors import Unauthorized
from detmix_service.runtime import Runtime

__all__ = ["ApiKeyChecked", "RuntimeDep", "require_api_key"]


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="needed when the server was started with API keys"
)


def require_api_key(runtime: RuntimeDep, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    """Pass when no keys are configured or ``X-API-Key`` is one of them (compared in constant
    time, against every key)."""
    keys = runtime.settings.api_keys
    if not keys:
        return
    if not key:
        raise Unauthorized("the X-API-Key header is missing", ["header", "x-api-key"],
                           headers={"WWW-Authenticate": "ApiKey"})
    given = key.encode("utf-8", "surrogateescape")
    matched = False
    for accepted in keys:
        matched |= hmac.compare_digest(given, accepted.get_secret_value().encode("utf-8"))
    if not matched:
        raise Unauthorized("the X-API-Key header is not a valid key", ["header", "x-api-key"],
                           headers={"WWW-Authenticate": "ApiKey"})


ApiKeyChecked = Depends(require_api_key)
