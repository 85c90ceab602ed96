"""The one way a task works on its job: claim it, keep its heartbeat while working, and turn
what happened into the row's outcome. Each task (runs.py, galleries.py, packs.py) brings
only what is its own: the work, and how its row fails."""
from __future__ import annotations

import logging
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from app import repositories as repo
from app.errors import Message
from app.storage import StorageError
from worker.tasks.env import Env
from worker.tasks.leases import Heartbeat, Superseded, claim, retry_or_fail

log = logging.getLogger("domainstudio.worker")

# work(heartbeat) -> outcome; fail(heartbeat, message) -> outcome
Work = Callable[[Heartbeat], str]
Fail = Callable[[Heartbeat, Message], str]


def run_job(e: Env, model, obj_id, kind: str, work: Work, fail: Fail, *,
            claimed: Callable[[], None] | None = None, crashed: Callable[[Exception], Message] | None = None) -> str:
    """claim -> heartbeat -> outcome. "skipped" when another delivery holds the job or it is
    done; "superseded" when another delivery took it over meanwhile (its row is theirs). An
    object store that failed puts the job back in the queue while retries are left
    (RetryLater goes up to the task), else fails it; any other error fails it. ``claimed``
    runs once the job is ours, before the work; ``crashed`` words an unexpected error."""
    attempt = claim(e, model, obj_id)
    if attempt is None:
        return "skipped"
    if claimed is not None:
        claimed()
    with Heartbeat(e, model, obj_id, attempt) as heartbeat:
        try:
            return work(heartbeat)
        except Superseded:
            return "superseded"
        except StorageError as exc:
            retry_or_fail(e, model, obj_id, heartbeat, exc)
            return fail(heartbeat, storage_failed(exc))
        except Exception as exc:
            log.exception(f"{kind}.crashed", extra={kind: str(obj_id)})
            return fail(heartbeat, (crashed or internal_error)(exc))


def storage_failed(exc: StorageError) -> Message:
    return Message("the object store failed: %(detail)s", {"detail": str(exc)})


def internal_error(exc: Exception) -> Message:
    return Message("internal error (%(kind)s)", {"kind": type(exc).__name__})


def set_row(e: Env, model, obj_id, **values) -> None:
    with e.sessions() as db:
        repo.update_job(db, model, obj_id, **values)
        db.commit()


def cancel_asked(e: Env, model, obj_id) -> bool:
    try:
        with e.sessions() as db:
            return repo.cancel_requested(db, model, obj_id)
    except Exception:  # the database is unreachable: keep going, ask again later
        return False


def download_photos(e: Env, photos, folder: Path) -> list[Path]:
    """The photos, each with its caption beside it as photo.txt (what the core reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in photos:
        path = folder / p.key.rsplit("/", 1)[-1]
        if not path.exists():
            e.storage.download(p.key, path)
        caption = path.with_suffix(".txt")
        if getattr(p, "caption", None):
            caption.write_text(p.caption, encoding="utf-8")
        elif caption.exists():  # removed since an earlier attempt of this run
            caption.unlink()
        paths.append(path)
    return paths


def png(img) -> bytes:
    out = BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
