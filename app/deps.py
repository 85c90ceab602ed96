"""Request-scoped dependencies: database session, signed-in user, CSRF check."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app import i18n
from app import repositories as repo
from app.db import close_session
from app.jobs import JobQueue
from app.models import User
from app.security import csrf_ok
from app.settings import Settings
from app.storage import Storage


class LoginRequired(Exception):
    """Raised for a request without a valid session: pages redirect, the API answers 401."""


class CSRFFailed(Exception):
    pass


def get_db(request: Request) -> Iterator[Session]:
    db = request.app.state.sessionmaker()
    try:
        yield db
    finally:
        close_session(db)


@dataclass
class Ctx:
    db: Session
    user: User
    settings: Settings
    storage: Storage
    queue: JobQueue
    lang: str = "en"  # the reader's language (app.i18n), for texts the serializers translate

    @property
    def team_id(self) -> uuid.UUID:
        return self.user.team_id


def current_user(request: Request, db: Session = Depends(get_db)) -> User:
    raw = request.session.get("user_id")
    try:
        user = repo.user_by_id(db, uuid.UUID(raw)) if raw else None
    except ValueError:
        user = None
    if user is None or request.session.get("epoch", 0) != user.session_epoch:  # signed out since
        request.session.pop("user_id", None)
        raise LoginRequired()
    return user


async def check_csrf(request: Request) -> None:
    """Every state-changing request carries the session's token, as the X-CSRF-Token
    header (JavaScript and API clients) or as the csrf_token form field (HTML forms)."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    supplied = request.headers.get("x-csrf-token")
    if not supplied and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        supplied = form.get("csrf_token")
    if not csrf_ok(request.session, supplied if isinstance(supplied, str) else None):
        raise CSRFFailed()


def ctx(request: Request, db: Session = Depends(get_db), user: User = Depends(current_user), _=Depends(check_csrf)) -> Ctx:
    state = request.app.state
    return Ctx(db=db, user=user, settings=state.settings, storage=state.storage, queue=state.queue,
               lang=i18n.request_locale(request))
