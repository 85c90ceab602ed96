from __future__ import annotations

import re

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import repositories as repo
from app.errors import BadInput, Conflict, TooManyRequests
from app.models import Team, User
from app.passwords import check_password
from app.security import hash_password, verify_password

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def sign_up(db: Session, email: str, password: str, team_name: str | None = None) -> User:
    email = (email or "").strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 320:
        raise BadInput("enter a valid email address", field="email")
    check_password(password or "", email)
    if repo.user_by_email(db, email):
        raise Conflict("an account with this email already exists", field="email")
    team = Team(name=(team_name or "").strip()[:200] or f"{email.split('@')[0]}'s team")
    user = User(team=team, email=email, password_hash=hash_password(password))
    db.add_all([team, user])
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise Conflict("an account with this email already exists", field="email") from None
    return user


_DUMMY_HASH = hash_password("no such account: equal work for unknown emails")


def authenticate(db: Session, email: str, password: str) -> User | None:
    user = repo.user_by_email(db, (email or "").strip())
    if user is None:
        verify_password(_DUMMY_HASH, password or "")  # same time as a known email: no account probing
        return None
    if not verify_password(user.password_hash, password or ""):
        return None
    return user


def sign_in(db: Session, limiter, email: str, password: str, client_ip: str | None, device: str | None = None) -> User:
    """authenticate() behind the sign-in limit (app/ratelimit.py): 429 while the client
    must wait, 400 when wrong. ``device``: the id of this browser's device cookie for this
    account (a browser that signed in to it before), which only its own failures slow down."""
    wait = limiter.retry_after(email, client_ip, device)
    if wait:
        raise TooManyRequests("too many failed sign-ins; try again in %(wait)s seconds", params={"wait": wait},
                              headers={"Retry-After": str(wait)})
    user = authenticate(db, email, password)
    if user is None:
        limiter.failed(email, client_ip, device)
        raise BadInput("wrong email or password")
    limiter.succeeded(email, client_ip, device)
    return user


def sign_out(db: Session, user: User) -> None:
    """Ends every session of the user: cookies issued before this no longer sign in."""
    user.session_epoch = (user.session_epoch or 0) + 1
    db.commit()
