"""One settings object for the web app, the Celery workers and the scripts.

Every field is read from the environment with the prefix ``DOMAINSTUDIO_`` (for example
``DOMAINSTUDIO_DATABASE_URL``). The defaults are the embedded configuration: SQLite, a
local-folder object store and a Celery broker kept in a SQLite file, all under ``var/``.
"""
from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOMAINSTUDIO_", extra="ignore")

    # where the embedded configuration keeps its files
    data_dir: Path = Path("var")
    database_url: str = ""  # default: sqlite:///<data_dir>/domainstudio.sqlite
    broker_url: str = ""  # default: sqla+sqlite:///<data_dir>/broker.sqlite
    queue_gpu: str = "gpu"
    queue_cpu: str = "cpu"

    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path | None = None  # default: <data_dir>/objects
    s3_endpoint_url: str | None = None
    # where browsers reach the object store for presigned downloads, when that differs
    # from the address the servers use (docker compose: http://localhost:9000 vs minio:9000)
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "domainstudio"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    presign_seconds: int = Field(300, ge=10, le=86400)

    secret_key: str = ""  # default: generated once into <data_dir>/secret_key
    session_max_age: int = 14 * 24 * 3600
    cookie_secure: bool = False
    # sign-in throttling (app/ratelimit.py): after login_max_failures failures of one
    # account from one address (10x for the account from all addresses, or for one
    # address over all accounts; a browser that signed in to the account before counts
    # alone) each further try waits 1, 2, 4, ... s, at most login_max_delay_seconds;
    # counts are forgotten login_window_seconds (plus that delay) after the latest failure
    login_max_failures: int = Field(5, ge=1)
    login_window_seconds: int = Field(300, ge=1)
    login_max_delay_seconds: int = Field(900, ge=1)
    # sign-ups and sign-ins checked at once per api process (argon2 takes 64 MB and a good
    # part of a second of CPU each); more wait without holding a thread
    password_threads: int = Field(4, ge=1)
    # largest upload request body: the page sends one photo per request; the form without
    # JavaScript and API clients send batches of at most this much
    max_request_bytes: int = Field(100 * 1024 * 1024, ge=1024 * 1024)
    # request headers: one may have at most max_header_bytes (name and value), all together
    # max_headers_bytes; a request over either is answered 400 before they are read
    max_header_bytes: int = Field(8192, ge=1024)
    max_headers_bytes: int = Field(32768, ge=4096)

    # comma-separated list of builtin specs and local diffusers folders users may choose
    base_models: str = "builtin:fmnist-sd-32,builtin:fmnist-ddpm-32"
    device: str = "auto"
    # torch CPU threads of a worker's runs and galleries; 0: half the CPU cores, at least 1.
    # Two threads on two cores that other processes also use made every training step
    # 8-10x slower (OpenMP threads wait for each other whenever one is descheduled:
    # benchmarks/worker_step.py), and the embedded default shares its cores with the web app.
    torch_threads: int = Field(0, ge=0, le=1024)
    work_dir: Path | None = None  # default: <data_dir>/work (worker scratch space)

    max_upload_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_pixels_side: int = 32
    # pixels one upload request may have decoded (a JPEG that needs no rotation counts at
    # the 1/2-1/8 scale it is checked at); the photos beyond are refused with the reason
    max_request_pixels: int = Field(150_000_000, ge=1)
    # pixels the api process decodes at once, over all requests: bounds the memory a flood
    # of large images takes (about 4-8 bytes per pixel); a larger image goes through alone
    max_decode_pixels: int = Field(50_000_000, ge=1)
    # upload requests checked at once per api process (each on a thread of its own); more wait
    upload_threads: int = Field(4, ge=1)
    min_photos: int = 10
    max_photos: int = 100

    gallery_size: int = Field(64, ge=1, le=1000)
    # what one run may ask for: training steps, gallery images (also after "generate
    # more"), and the peak memory of a training step as estimated from its settings
    # (app/runlimits.py) against what a worker has (GPU memory, or RAM on CPU workers)
    max_run_steps: int = Field(20_000, ge=1)
    max_gallery_size: int = Field(1000, ge=1, le=100_000)
    worker_memory_mb: int = Field(16_000, ge=256)
    # runs of one team waiting or training at once; one more is a 429
    max_active_runs_per_team: int = Field(3, ge=1)
    # packs of one team waiting or being built at once; one more is a 429
    max_active_packs_per_team: int = Field(3, ge=1)
    # what a team's photos, checkpoints and packs may take in object storage; at the quota,
    # new uploads, runs and packs are refused (409) until the team deletes some; 0: no quota
    max_team_storage_bytes: int = Field(50 * 1024**3, ge=0)
    sample_steps: int = Field(25, ge=1, le=1000)
    sample_batch_size: int = Field(8, ge=1, le=256)
    # copy guard: a local CLIP or DINO folder (transformers format, loaded offline) whose
    # features measure each image's distance to the nearest training photo; empty: the
    # Fashion-MNIST classifier for the demo model, a pixel descriptor for other models
    copy_guard_model: str = ""
    # cosine distance under which an image counts as a near copy of a training photo;
    # unset: the feature network's calibrated default (worker/copyguard.py)
    near_copy_threshold: float | None = Field(None, ge=0, le=2)

    log_level: str = "INFO"

    # open live progress streams (GET /api/runs/{id}/events) per user and per api process;
    # one more is a 429 (a browser tab holds one per run page it shows)
    max_event_streams_per_user: int = Field(10, ge=1)
    max_event_streams: int = Field(500, ge=1)

    run_soft_time_limit: int = 6 * 3600
    run_hard_time_limit: int = 6 * 3600 + 600
    # a job's worker writes a heartbeat this often; a running job whose heartbeat is older
    # than job_stale_seconds is re-queued by the watchdog in every worker (its worker died)
    job_heartbeat_seconds: float = Field(10, gt=0)
    job_stale_seconds: float = Field(90, gt=0)
    watchdog_seconds: float = Field(30, gt=0)
    # a job committed as queued but not sent this long after (its process died in between)
    # is sent by the watchdog
    job_unsent_seconds: float = Field(120, gt=0)
    # a job whose worker died this many times on it (SIGKILL, the OOM killer) is failed
    # with the reason instead of being sent to the next worker, which it would kill too
    max_job_attempts: int = Field(3, ge=1)
    # a job whose object store failed goes back to the queue and is tried again after
    # storage_retry_seconds (doubling, at most 10 minutes), up to storage_retries times
    storage_retries: int = Field(5, ge=0)
    storage_retry_seconds: float = Field(30, gt=0)
    # a run that has trained this long in one turn on a gpu worker gives the worker up when a
    # gallery, another team's run or an earlier run of its team waits (worker/turns.py): its
    # state is saved and it goes to the back of the queue; 0: runs never give up their turn
    run_slice_seconds: float = Field(300, ge=0)

    # ------------------------------------------------------------------ derived values
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'domainstudio.sqlite').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def resolved_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "objects").resolve()

    @property
    def resolved_work_dir(self) -> Path:
        return (self.work_dir or self.data_dir / "work").resolve()

    @property
    def resolved_torch_threads(self) -> int:
        return self.torch_threads or max(1, (os.cpu_count() or 1) // 2)

    @property
    def base_model_list(self) -> list[str]:
        return [m.strip() for m in self.base_models.split(",") if m.strip()]

    @property
    def resolved_secret_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
