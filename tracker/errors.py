"""Errors that cross layers. Each carries a stable code and a message a person can act on."""

from __future__ import annotations


class TrackerError(Exception):
    """Base class. ``status`` is the HTTP status the web layer answers with."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class SettingsError(TrackerError):
    code = "bad_setting"


class NotFound(TrackerError):
    status = 404
    code = "not_found"


class Invalid(TrackerError):
    """The request is well-formed but breaks a rule (422)."""

    status = 422
    code = "invalid"


class Conflict(TrackerError):
    status = 409
    code = "conflict"


class Unauthorized(TrackerError):
    status = 401
    code = "unauthorized"


class Forbidden(TrackerError):
    status = 403
    code = "forbidden"


class DatabaseUnavailable(TrackerError):
    """The database could not take the write; the caller should retry later (503)."""

    status = 503
    code = "database_unavailable"


class SchemaNotReady(TrackerError):
    """The database's schema is not the one this code needs (a command run before ``tracker db upgrade``)."""

    status = 503
    code = "schema_not_ready"
