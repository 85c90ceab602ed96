"""Errors services raise; routes turn them into HTTP answers with the message as reason."""


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None, **extra):
        super().__init__(message)
        self.message = message
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
