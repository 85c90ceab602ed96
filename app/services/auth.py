from __future__ import annotations

import re

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import repositories as repo
from app.errors import BadInput, Conflict
from app.models import Team, User
from app.security import hash_password, verify_password

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 10


def sign_up(db: Session, email: str, password: str, team_name: str | None = None) -> User:
    email = (email or "").strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 320:
        raise BadInput("enter a valid email address")
    if len(password or "") < MIN_PASSWORD:
        raise BadInput(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > 1000:
        raise BadInput("the password is too long")
    if repo.user_by_email(db, email):
        raise Conflict("an account with this email already exists")
    team = Team(name=(team_name or "").strip()[:200] or f"{email.split('@')[0]}'s team")
    user = User(team=team, email=email, password_hash=hash_password(password))
    db.add_all([team, user])
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise Conflict("an account with this email already exists") from None
    return user


def authenticate(db: Session, email: str, password: str) -> User | None:
    user = repo.user_by_email(db, (email or "").strip())
    if user is None or not verify_password(user.password_hash, password or ""):
        return None
    return user
