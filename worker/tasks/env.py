"""What a task works with: settings, database sessions, the object store and the job queue.
The tasks take it as an argument, so a test builds one of its own (``Env(settings, ...)``)
and a worker process makes one from its settings, once (``env()``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from app.jobs import JobQueue
from app.settings import Settings, get_settings
from app.storage import Storage, make_storage


@dataclass
class Env:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage | None
    queue: JobQueue

    @classmethod
    def from_settings(cls, settings: Settings, celery_app=None) -> Env:
        from worker.celery_app import app as worker_celery

        return cls(settings, make_sessionmaker(make_engine(settings.resolved_database_url)), make_storage(settings),
                   JobQueue(celery_app or worker_celery))


@lru_cache(maxsize=1)
def env() -> Env:
    """This worker process's environment, made on its first job."""
    return Env.from_settings(get_settings())


def _forget_inherited_connections() -> None:
    """A forked child (a prefork worker's replacement) must not use the pooled database
    connections it inherited from its parent, whose watchdog made them: both would talk over
    one socket (seen: "unexpected result EMPTY_QUERY from command 'ROLLBACK'", "server closed
    the connection"). SQLAlchemy's advice for forks: dispose of the pool without closing them."""
    if env.cache_info().currsize:
        env().sessions.kw["bind"].dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def use_torch_threads(e: Env) -> None:
    """Sets this worker's torch CPU threads (DOMAINSTUDIO_TORCH_THREADS) before a run or a
    gallery: torch's default, one per core, is 8-10x slower per step when other processes
    share the cores (benchmarks/worker_step.py)."""
    import torch

    if torch.get_num_threads() != e.settings.resolved_torch_threads:
        torch.set_num_threads(e.settings.resolved_torch_threads)
