"""The service's errors: each one knows its status code, where the problem is and why.

Every error answer has one shape, FastAPI's own for validation errors::

    {"detail": [{"loc": ["body", "annotations", 3, "bbox"], "msg": "annotation 17: ...", "type": "coco"}]}

``loc`` is the path to the offending field (``body``, ``header``, ``path`` or ``query`` first) and
``msg`` says what was expected and what came, naming the annotation or image by its id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "ClientDisconnected",
    "DatasetUnreadable",
    "DeadlineExceeded",
    "ErrorItem",
    "InsufficientStorage",
    "InvalidInput",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "ServiceError",
    "ShuttingDown",
    "Unauthorized",
    "UnsupportedMediaType",
    "UploadTooSlow",
]

Loc = Sequence[str | int]


def ErrorItem(loc: Loc, msg: str, type: str) -> dict[str, Any]:  # noqa: N802 - a record constructor
    return {"loc": list(loc), "msg": msg, "type": type}


class ServiceError(Exception):
    """An error answered with ``status``; ``reason`` labels it in the rejection metrics."""

    status: int = 500
    reason: str = "error"
    type: str = "error"

    def __init__(
        self, msg: str, loc: Loc = (), *, type: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(msg)
        self.errors = [ErrorItem(loc, msg, type or self.type)]
        self.headers = headers or {}


class InvalidInput(ServiceError):
    """The request is well-formed HTTP but its content is wrong: 422 with every problem found."""

    status, reason, type = 422, "invalid_input", "value_error"

    @classmethod
    def many(cls, errors: Sequence[dict[str, Any]]) -> InvalidInput:
        """One exception carrying several error items (the first one is its message)."""
        first = errors[0]
        error = cls(first["msg"], first["loc"], type=first["type"])
        error.errors = [ErrorItem(e["loc"], e["msg"], e["type"]) for e in errors]
        return error


class Unauthorized(ServiceError):
    status, reason, type = 401, "unauthorized", "unauthorized"


class NotFound(ServiceError):
    status, reason, type = 404, "not_found", "not_found"


class PayloadTooLarge(ServiceError):
    status, reason, type = 413, "body_too_large", "body_too_large"


class UnsupportedMediaType(ServiceError):
    status, reason, type = 415, "unsupported_media_type", "unsupported_media_type"


class Overloaded(ServiceError):
    status, reason, type = 429, "overloaded", "overloaded"


class UploadTooSlow(ServiceError):
    status, reason, type = 408, "upload_too_slow", "upload_too_slow"


class ShuttingDown(ServiceError):
    """The server is stopping and the request was not done within the graceful shutdown."""

    status, reason, type = 503, "shutting_down", "shutting_down"


class DeadlineExceeded(ServiceError):
    status, reason, type = 504, "deadline_exceeded", "deadline_exceeded"


class InsufficientStorage(ServiceError):
    """The server's temporary folder is full (or over a quota): 507, the client may retry."""

    status, reason, type = 507, "insufficient_storage", "insufficient_storage"


class DatasetUnreadable(ServiceError):
    """A file of a server-side dataset cannot be read: the server's problem, not the client's."""

    status, reason, type = 500, "dataset_unreadable", "dataset_unreadable"


class ClientDisconnected(Exception):
    """The client went away; nobody is left to answer."""
