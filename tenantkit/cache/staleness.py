"""When a page that stopped being fresh may still be served, and why: the one place for
the stale rules of the page cache::

    reason = stale_reason(ended, now, stale_seconds=30, stale_if_error=300)
    reason == REVALIDATE    # served (STALE) while one request renders it again
    reason == IF_ERROR      # served (STALE) only when the backend fails (5xx, timeout, refused)
    reason is None          # too old to serve at all

*ended* is when the page stopped being fresh: it expired, or it was purged (a flush purges
every page), whichever came first.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["IF_ERROR", "REVALIDATE", "StaleReason", "stale_horizon", "stale_reason"]

StaleReason = Literal["revalidate", "if-error"]
REVALIDATE: StaleReason = "revalidate"
IF_ERROR: StaleReason = "if-error"


def stale_reason(ended: float, now: float, *, stale_seconds: float,
                 stale_if_error: float) -> StaleReason | None:
    """Why a page that stopped being fresh at *ended* may still be served at *now*: within
    ``stale_seconds`` for anyone while it is rendered again, within ``stale_if_error`` when
    the backend fails; None when neither."""
    late = now - ended
    if late < stale_seconds:
        return REVALIDATE
    if late < stale_if_error:
        return IF_ERROR
    return None


def stale_horizon(*, stale_seconds: float, stale_if_error: float) -> float:
    """How long after it stopped being fresh a page may be served for any reason (how long
    a flushed generation is worth keeping)."""
    return max(stale_seconds, stale_if_error)
