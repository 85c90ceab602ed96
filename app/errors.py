"""Errors services raise; routes turn them into HTTP answers with the message as reason."""


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None,
                 params: dict | None = None, **extra):
        # ``message`` is an English msgid with %(name)s placeholders filled from ``params``;
        # keeping the two apart lets the error handler translate the msgid per request.
        self.msgid, self.params = message, params or {}
        self.message = message % self.params if params else message
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
