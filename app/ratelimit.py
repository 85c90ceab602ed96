"""Sign-in throttling that cannot lock a legitimate user out (OWASP's "device cookies"
scheme, with progressive delays instead of locks), and the request size limits.

Failed sign-ins are counted per key; once a key has ``free`` failures, each further one
makes its clients wait 1, 2, 4, ... seconds (at most ``max_delay``) before the next try,
answered 429 with Retry-After meanwhile. Which keys count depends on the browser:

* a **known browser** (it signed in to this account before: the signed device cookie names
  the account) counts only against itself: no failure elsewhere slows its owner down;
* any other client counts against the account and its address together (``free``
  failures), the account from every address (``free`` x IP_FACTOR: guessing spread over
  many addresses, or a forged X-Forwarded-For) and its address for every account
  (``free`` x IP_FACTOR: one address trying many accounts).

So an attacker's failures slow down the attacker's address for that account, never the
owner's known browser, and a shared address (a proxy, an office) is slowed down, never
locked. A success clears the account-and-address and device counts. Counts live in Redis
when the broker is Redis (every api replica counts together), else in this process.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from starlette.exceptions import HTTPException

IP_FACTOR = 10  # the account from all addresses, or one address over all accounts, may fail this many times more
MAX_KEYS = 100_000  # memory bound of the in-process counts: the least recently failed keys are forgotten first


def delay_after(failures: int, free: int, max_delay: float) -> float:
    """Seconds a key's clients wait after its latest failure: none for the first ``free``
    - 1 failures, then 1, 2, 4, ... up to max_delay."""
    return 0.0 if failures < free else float(min(2 ** (failures - free), max_delay))


class MemoryCounts:
    """(failures, time of the latest) per key, in this process, forgotten ``ttl`` seconds
    after the latest failure."""

    def __init__(self):
        self._counts: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float, ttl: float) -> tuple[int, float]:
        with self._lock:
            count, last = self._counts.get(key, (0, 0.0))
            return (count, last) if now - last < ttl else (0, 0.0)

    def add(self, key: str, now: float, ttl: float) -> None:
        with self._lock:
            count, last = self._counts.pop(key, (0, 0.0))
            self._counts[key] = (count + 1 if now - last < ttl else 1, now)  # most recent last
            while len(self._counts) > MAX_KEYS:
                self._counts.popitem(last=False)

    def clear(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


class RedisCounts:
    """The same in Redis (a hash per key, expiring ``ttl`` after the latest failure), so
    that every api replica counts together."""

    def __init__(self, url: str, prefix: str):
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = prefix

    def get(self, key: str, now: float, ttl: float) -> tuple[int, float]:
        values = self.redis.hmget(self.prefix + key, "count", "last")
        return (int(values[0]), float(values[1])) if values[0] is not None else (0, 0.0)

    def add(self, key: str, now: float, ttl: float) -> None:
        pipe = self.redis.pipeline()
        pipe.hincrby(self.prefix + key, "count", 1)
        pipe.hset(self.prefix + key, "last", now)
        pipe.expire(self.prefix + key, max(1, int(ttl)))
        pipe.execute()

    def clear(self, key: str) -> None:
        self.redis.delete(self.prefix + key)


class LoginLimiter:
    def __init__(self, max_failures: int, window_seconds: float, max_delay: float = 900,
                 counts: MemoryCounts | RedisCounts | None = None, clock=time.time):
        self.max_failures, self.window, self.max_delay = max_failures, float(window_seconds), float(max_delay)
        self.counts = counts or MemoryCounts()
        self.clock = clock

    @property
    def ttl(self) -> float:
        """A key is forgotten once no failure came for the window plus the longest delay."""
        return self.window + self.max_delay

    def _keys(self, email: str, ip: str | None, device: str | None) -> list[tuple[str, int]]:
        email = (email or "").strip().lower()
        if device:
            return [("device:" + device, self.max_failures)]
        keys = [(f"pair:{email}|{ip or '-'}", self.max_failures), ("account:" + email, self.max_failures * IP_FACTOR)]
        if ip:
            keys.append(("ip:" + ip, self.max_failures * IP_FACTOR))
        return keys

    def retry_after(self, email: str, ip: str | None, device: str | None = None) -> int:
        """Seconds to wait before trying again; 0 when a sign-in may be tried now.
        ``device``: the id in a valid device cookie of this account (a known browser)."""
        now = self.clock()
        wait = 0.0
        for key, free in self._keys(email, ip, device):
            count, last = self.counts.get(key, now, self.ttl)
            wait = max(wait, last + delay_after(count, free, self.max_delay) - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, email: str, ip: str | None, device: str | None = None) -> None:
        now = self.clock()
        for key, _ in self._keys(email, ip, device):
            self.counts.add(key, now, self.ttl)

    def succeeded(self, email: str, ip: str | None, device: str | None = None) -> None:
        for key, _ in self._keys(email, ip, device)[:1]:  # the address's and the account's counts stay
            self.counts.clear(key)


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
