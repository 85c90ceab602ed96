"""A run's progress as its row keeps it: the stages its time goes to (runs.stage_times,
the run report) and the points of its loss chart (runs.loss_history). The worker writes
them, the web reads them; both take the rules from here."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# the stages a run's time goes to, in order (runs.stage_times; the report shows them so)
STAGES = ("queued", "download", "adapt", "publish", "gallery_queued", "gallery")
# the run's own stages, up to its checkpoint: what the run page's "Elapsed" adds up
RUN_STAGES = STAGES[:4]
# loss chart points kept per run: enough for a smooth curve, small enough that a 100k-step
# run's row stays a few hundred kilobytes
MAX_LOSS_POINTS = 1000


def loss_point(step: int, elapsed: float | None, terms: Mapping[str, float]) -> dict[str, Any]:
    """One point of the loss chart. Values keep 6 significant digits (plenty for a chart,
    a third of the JSON); a NaN or infinite loss becomes null (JSON has no NaN)."""
    return {"step": int(step), "elapsed": round(float(elapsed or 0.0), 3),
            "terms": {k: float(f"{v:.6g}") if math.isfinite(v) else None for k, v in
                      ((k, float(v)) for k, v in terms.items())}}


def add_loss_point(history: list[dict[str, Any]], point: dict[str, Any],
                   limit: int = MAX_LOSS_POINTS) -> list[dict[str, Any]]:
    """The history with ``point`` appended: at most ``limit`` points spread evenly over
    the run however long it is, the first and the newest always in.

    Points at or after its step go first: a resumed run repeats the steps after its last
    saved state. The steps are cut into equal buckets, as wide as the smallest power of
    two that makes fewer than ``limit`` of them up to the newest step, and each bucket
    keeps its first point; as the run goes on the buckets double and merge in pairs. The
    result depends only on the points, so the worker needs no state besides the list.
    """
    older = [p for p in history if p["step"] < point["step"]]
    stride = 1
    while point["step"] // stride >= limit - 1:
        stride *= 2
    kept, bucket = [], None
    for p in older:
        if p["step"] // stride != bucket:
            kept.append(p)
            bucket = p["step"] // stride
    kept.append(point)
    return kept


def with_stage_time(times: Mapping[str, float] | None, stage: str, seconds: float, add: bool = False) -> dict[str, float]:
    """``times`` with one stage's seconds set (or added to, for a stage done in several
    goes such as a gallery grown with "generate more")."""
    out = dict(times or {})
    out[stage] = round((out.get(stage, 0.0) if add else 0.0) + max(seconds, 0.0), 3)
    return out


def total_seconds(times: Mapping[str, float | None] | None) -> float | None:
    """The run's whole time as the report counts it: the sum of its stages' times (queue,
    download, training, saving, gallery); None when none was measured."""
    measured = [v for v in (times or {}).values() if v is not None]
    return round(sum(measured), 3) if measured else None
