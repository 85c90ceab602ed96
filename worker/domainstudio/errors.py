"""Errors the core raises. Messages are written for the person who gave the input.

A message is an English msgid with %(name)s placeholders plus its params, kept apart so
that the web app can show it in the reader's language (its catalogs extract these msgids,
see babel.cfg); the CLI and the logs see the English text, ``str(exc)``."""


class DomainStudioError(Exception):
    """Base class: the message says what went wrong and how to fix it.

        raise InputError("steps must be between %(low)s and %(high)s, got %(value)s",
                         low=1, high=1000, value=steps)

    Params are plain values (str, int, float) so that they can be stored as JSON."""

    def __init__(self, msgid: str = "", **params):
        self.msgid, self.params = msgid, params
        super().__init__(msgid % params if params else msgid)


class Notice(str):
    """A warning for the person (a photo that was skipped): its English text, with msgid
    and params kept apart as in DomainStudioError, so that the web app can translate it.

        Notice("skipped %(name)s: not a readable image (%(error)s)", name=name, error=kind)
    """

    msgid: str
    params: dict

    def __new__(cls, msgid: str, **params):
        notice = super().__new__(cls, msgid % params if params else msgid)
        notice.msgid, notice.params = msgid, params
        return notice


class InputError(DomainStudioError, ValueError):
    """Bad photos or settings."""


class ModelError(DomainStudioError):
    """A base model or checkpoint is missing, malformed, unreachable or mismatched."""


class Canceled(DomainStudioError):
    """The caller asked the adaptation (or sampling) to stop."""
