"""Password hashing (argon2id), CSRF tokens kept in the signed session cookie, and the
device cookie that marks a browser which signed in to an account before (app/ratelimit.py)."""
from __future__ import annotations

import hmac
import secrets

from argon2 import PasswordHasher
from itsdangerous import BadSignature, URLSafeSerializer
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def csrf_token(session: dict) -> str:
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok(session: dict, supplied: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and supplied and hmac.compare_digest(expected, supplied))


DEVICE_COOKIE = "domainstudio_device"
DEVICE_MAX_AGE = 365 * 24 * 3600


def _devices(secret: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt="domainstudio-device")


def device_cookie(secret: str, email: str) -> str:
    """A new device cookie for this browser and account: a random id, signed."""
    return _devices(secret).dumps({"email": email.strip().lower(), "id": secrets.token_urlsafe(16)})


def device_id(secret: str, cookie: str | None, email: str) -> str | None:
    """The id of a valid device cookie issued for this account; None for any other."""
    if not cookie:
        return None
    try:
        data = _devices(secret).loads(cookie)
    except BadSignature:
        return None
    if not isinstance(data, dict) or data.get("email") != (email or "").strip().lower():
        return None
    return str(data.get("id") or "") or None
