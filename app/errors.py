"""Errors services raise; routes turn them into HTTP answers with the message as reason.

Messages are English msgids with %(name)s placeholders and their params kept apart, so
that the error handler can translate them for each request (app/i18n.py); ``message`` is
the English text, for logs and for callers that do not translate."""
from __future__ import annotations

import math
from collections.abc import Callable


def _same(msgid: str) -> str:
    return msgid


def N_(msgid: str) -> str:
    """Marks a string for extraction where it is translated later (e.g. a table of labels)."""
    return msgid


class Message:
    """A msgid and its params, rendered (translated) only when shown. A param may be a
    Message itself or a list of them (joined with "; "), e.g. the reasons per refused file."""

    def __init__(self, msgid: str, params: dict | None = None):
        self.msgid, self.params = msgid, params or {}

    def render(self, gettext: Callable[[str], str] = _same) -> str:
        text = gettext(self.msgid)
        if not self.params:
            return text
        return text % {k: render_value(v, gettext) for k, v in self.params.items()}

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"Message({self.msgid!r}, {self.params!r})"


def message_of(exc: BaseException) -> Message:
    """A core error or notice (worker/domainstudio/errors.py keeps msgid and params apart)
    as a Message; any other exception or text as its English text."""
    msgid = getattr(exc, "msgid", "")
    return Message(msgid, dict(getattr(exc, "params", {}) or {})) if msgid else Message(str(exc))


def set_error(row, message: Message | None) -> None:
    """Store a failure on a run, gallery or pack: the English text in ``error`` (API
    clients, logs) and the msgid with its params in ``error_detail``, so that each reader
    sees it in their language (app.i18n.stored_error); None clears both."""
    for column, value in error_values(message).items():
        setattr(row, column, value)


def error_values(message: Message | None) -> dict:
    """The same two columns for an UPDATE statement."""
    return {"error": message.render() if message is not None else None, "error_detail": error_detail(message)}


def set_warnings(row, warnings) -> None:
    """A run's warnings (the core's Notices: str with msgid and params) as English text in
    ``warnings`` and as msgids with params in ``warning_details``."""
    row.warnings = [str(w) for w in warnings]
    row.warning_details = [error_detail(message_of(w)) for w in warnings]


def error_detail(message: Message | None) -> dict | None:
    if message is None:
        return None
    return {"msgid": message.msgid, "params": {k: _json_param(v) for k, v in message.params.items()}}


def _json_param(value):
    """A param as JSON can hold it: plain values as they are; a loss of NaN or inf (training
    diverged), which Postgres' JSON refuses, and anything else as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(render_value(value))


def render_value(value, gettext: Callable[[str], str] = _same):
    if isinstance(value, Message):
        return value.render(gettext)
    if isinstance(value, list):
        return "; ".join(str(render_value(v, gettext)) for v in value)
    return value


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None,
                 params: dict | None = None, **extra):
        # ``message`` is an English msgid with %(name)s placeholders filled from ``params``;
        # keeping the two apart lets the error handler translate the msgid per request.
        self.msgid, self.params = message, params or {}
        self.message = Message(message, self.params).render()
        super().__init__(self.message)
        self.headers = headers or {}
        self.extra = extra  # more JSON fields for API clients


class BadInput(ServiceError):
    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Unavailable(ServiceError):
    status_code = 503


class TooManyRequests(ServiceError):
    status_code = 429


class Unprocessable(ServiceError):
    status_code = 422
