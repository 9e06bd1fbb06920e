"""The one backoff rule every retry uses: full jitter over an exponential ceiling, capped.

``delay(attempt)`` draws uniformly from ``[0, min(cap, base * 2**attempt)]`` (AWS's "full jitter"), so many
clients that failed together do not retry together.
"""

from __future__ import annotations

import random


def delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before try ``attempt + 1``; ``attempt`` counts the failures so far (from 0 or 1)."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt, 0)))  # noqa: S311 (jitter, not a secret)
