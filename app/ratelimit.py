"""Sign-in throttling (OWASP authentication guidance): failed attempts are counted per
account and per client address in a sliding window; once over the limit, sign-in answers
429 with Retry-After until the oldest failure leaves the window. A success clears the
account's count. Counts live in this process (one api process per deployment by default;
with several replicas each counts on its own, so the limit is per replica)."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

from starlette.exceptions import HTTPException

IP_FACTOR = 10  # one address may fail this many times more often than one account
MAX_KEYS = 100_000  # memory bound: the least recently failed keys are forgotten first


class LoginLimiter:
    def __init__(self, max_failures: int, window_seconds: float, clock=time.monotonic):
        self.max_failures, self.window, self.clock = max_failures, float(window_seconds), clock
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()

    def _keys(self, email: str, ip: str | None) -> list[tuple[str, int]]:
        keys = [("account:" + (email or "").strip().lower(), self.max_failures)]
        if ip:
            keys.append(("ip:" + ip, self.max_failures * IP_FACTOR))
        return keys

    def retry_after(self, email: str, ip: str | None) -> int:
        """Seconds to wait before trying again; 0 when a sign-in may be tried now."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key, limit in self._keys(email, ip):
                q = self._failures.get(key)
                if not q:
                    continue
                while q and q[0] <= now - self.window:
                    q.popleft()
                if len(q) >= limit:
                    wait = max(wait, q[len(q) - limit] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, email: str, ip: str | None) -> None:
        now = self.clock()
        with self._lock:
            for key, _ in self._keys(email, ip):
                q = self._failures.pop(key, None) or deque(maxlen=self.max_failures * IP_FACTOR)
                q.append(now)
                self._failures[key] = q  # most recent last
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, email: str) -> None:
        with self._lock:
            self._failures.pop("account:" + (email or "").strip().lower(), None)


class BodyTooLarge(HTTPException):
    """An HTTPException, so that FastAPI's body parsing passes it on as a 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the limit of {_mb(limit)}")


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


class BodyLimitMiddleware:
    """Refuses request bodies over a limit with 413 before they are read: by Content-Length
    when the client sends one, else by counting the bytes as they stream in. Photo uploads
    may send ``upload_limit`` bytes, every other request ``other_limit``."""

    def __init__(self, app, upload_limit: int, other_limit: int = 1024 * 1024):
        self.app, self.upload_limit, self.other_limit = app, upload_limit, other_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope["path"].rstrip("/").endswith("/photos") else self.other_limit
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _too_large(scope, send, limit)
        seen = 0
        started = over = False

        async def counting_receive():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if over:  # close instead of reading the rest of the body to keep the connection
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(scope, send, limit)


async def _too_large(scope, send, limit: int) -> None:
    import json

    body = json.dumps({"detail": BodyTooLarge(limit).detail}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class HeaderLimitMiddleware:
    """Answers 400 with the reason to a request whose headers are absurdly large (one over
    ``per_header`` bytes, or all of them over ``total`` bytes), before any of them is
    parsed: a 5,000-digit Last-Event-ID, a cookie or Accept-Language of many kilobytes.
    uvicorn's own limit is far higher (it resets the connection somewhere above 100 KB)."""

    def __init__(self, app, per_header: int, total: int, headers: dict[str, str] | None = None):
        self.app, self.per_header, self.total = app, per_header, total
        self.extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            sizes = [len(name) + len(value) for name, value in scope.get("headers") or ()]
            if sum(sizes) > self.total or any(size > self.per_header for size in sizes):
                return await self._refuse(send)
        return await self.app(scope, receive, send)

    async def _refuse(self, send) -> None:
        import json

        detail = f"the request headers are too large (at most {self.per_header} bytes each, {self.total} in all)"
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *self.extra]})
        await send({"type": "http.response.body", "body": body})
