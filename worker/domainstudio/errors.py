"""Errors the core raises. Messages are written for the person who gave the input."""


class DomainStudioError(Exception):
    """Base class: the message says what went wrong and how to fix it."""


class InputError(DomainStudioError, ValueError):
    """Bad photos or settings."""


class ModelError(DomainStudioError):
    """A base model or checkpoint is missing, malformed, unreachable or mismatched."""


class Canceled(DomainStudioError):
    """The caller asked the adaptation (or sampling) to stop."""
