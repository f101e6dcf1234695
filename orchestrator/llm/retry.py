"""When to try a model request again, and how long to wait first. Pure: no clock, no sleep.

``ModelClient`` owns the retry loop (the SDK's own retries are off) and asks ``next_try``
after each failed try whether, and after how long, to try again::

    retryable: HTTP 429, 500, 502, 503, 504; a connection refused or dropped before the reply
               started; a reply cut before any of its text was shown
    never:     timeouts (a silent server is not helped by a second silent wait), other HTTP
               errors, error events inside the stream, malformed replies

Waits grow exponentially from ``backoff_s`` (x2 per try, at most ``BACKOFF_CAP_S``) with
jitter: each wait is drawn from the upper half of its step, [d/2, d], so clients restarted
together do not retry in lockstep yet the worst case stays computable. A server's
``Retry-After`` (or ``retry-after-ms``) replaces the computed wait when it is sane: a finite
number of seconds (or an HTTP date) that ends before the deadline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_CAP_S = 8.0  # longer waits rarely find a recovered server; the deadline ends them anyway


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries a request gets before its reply starts, and within how long."""

    attempts: int = 4  # tries in all, the first included
    deadline_s: float = 30.0  # no try starts (and no wait ends) later than this after the first
    backoff_s: float = 0.5  # the first wait; doubled for each later one

    def backoff(self, retry: int, unit: float) -> float:
        """The wait before retry number ``retry`` (1 = the second try); ``unit`` in [0, 1)."""
        step = min(BACKOFF_CAP_S, self.backoff_s * 2.0 ** (retry - 1))
        return step * (0.5 + 0.5 * unit)

    def worst_case_waits(self) -> float:
        """The most time all waits of one request can take (the jitter at its top)."""
        total = sum(self.backoff(retry, 1.0) for retry in range(1, self.attempts))
        return min(total, self.deadline_s)


GiveUpReason = Literal["attempts", "deadline", "retry_after"]


@dataclass(frozen=True)
class NextTry:
    """``wait_s`` before the next try, or ``None`` with the reason to give up."""

    wait_s: float | None
    give_up: GiveUpReason | None = None
    retry_after_s: float | None = None  # what the server asked for, when it asked


def next_try(
    policy: RetryPolicy,
    *,
    tries: int,
    elapsed_s: float,
    retry_after_s: float | None,
    unit: float,
) -> NextTry:
    """Whether to try again after ``tries`` failed tries, ``elapsed_s`` after the first began."""
    if tries >= policy.attempts:
        return NextTry(None, "attempts", retry_after_s)
    remaining = policy.deadline_s - elapsed_s
    if retry_after_s is not None:
        if retry_after_s > remaining:
            return NextTry(None, "retry_after", retry_after_s)
        return NextTry(retry_after_s, None, retry_after_s)
    wait = policy.backoff(tries, unit)
    if wait > remaining:
        return NextTry(None, "deadline")
    return NextTry(wait)


def retry_after_s(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """The wait a 429/503 asks for, in seconds; ``None`` when absent or not sane.

    ``retry-after-ms`` (OpenAI's and Azure's) first, then ``Retry-After`` as seconds or as an
    HTTP date. Negative, non-finite or unparsable values are ignored (the backoff applies).
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    millis = _number(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # an HTTP date is always GMT; a zoneless one is not an HTTP date
    return max(0.0, when.timestamp() - now_epoch)


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
