"""Per-team quotas: what one team may hold in object storage. (The counts of runs and
packs waiting or working are checked where they are created, under a lock on the team.)"""
from __future__ import annotations

from sqlalchemy.orm import Session

from app import repositories as repo
from app.errors import Conflict
from app.i18n import format_size
from app.settings import Settings


def check_storage(db: Session, settings: Settings, team_id) -> None:
    """Refuses new work once the team's stored files reach max_team_storage_bytes."""
    quota = settings.max_team_storage_bytes
    if not quota:
        return
    used = repo.stored_bytes(db, team_id)
    if used >= quota:
        raise Conflict("your team's files take %(used)s of its %(quota)s of storage; delete packs, runs or "
                       "photo sets to make room", params={"used": format_size(used, "en"),
                                                          "quota": format_size(quota, "en")})
