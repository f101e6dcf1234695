"""The retry decisions (pure): backoff with jitter, the deadline, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from orchestrator.llm.retry import NextTry, RetryPolicy, next_try, retry_after_s

POLICY = RetryPolicy(attempts=4, deadline_s=30.0, backoff_s=0.5)

# (id, tries so far, elapsed s, Retry-After s, jitter unit, expected)
NEXT_TRY_CASES: list[tuple[str, int, float, float | None, float, NextTry]] = [
    ("first retry, jitter at the top", 1, 0.0, None, 1.0, NextTry(0.5)),
    ("first retry, jitter at the bottom", 1, 0.0, None, 0.0, NextTry(0.25)),
    ("second retry doubles", 2, 1.0, None, 1.0, NextTry(1.0)),
    ("third retry doubles again", 3, 2.0, None, 0.5, NextTry(1.5)),
    ("tries spent", 4, 3.0, None, 1.0, NextTry(None, "attempts")),
    ("tries spent even if the server asks", 4, 3.0, 1.0, 1.0, NextTry(None, "attempts", 1.0)),
    ("a wait past the deadline", 1, 29.9, None, 1.0, NextTry(None, "deadline")),
    ("a wait ending right at the deadline", 1, 29.5, None, 1.0, NextTry(0.5)),
    ("Retry-After replaces the backoff", 1, 0.0, 7.0, 1.0, NextTry(7.0, None, 7.0)),
    ("Retry-After 0", 2, 0.0, 0.0, 1.0, NextTry(0.0, None, 0.0)),
    ("Retry-After past the deadline", 1, 0.0, 60.0, 1.0, NextTry(None, "retry_after", 60.0)),
    ("Retry-After past what is left", 2, 25.0, 6.0, 1.0, NextTry(None, "retry_after", 6.0)),
]


@pytest.mark.parametrize(
    ("tries", "elapsed", "retry_after", "unit", "expected"),
    [c[1:] for c in NEXT_TRY_CASES],
    ids=[c[0] for c in NEXT_TRY_CASES],
)
def test_next_try(
    tries: int, elapsed: float, retry_after: float | None, unit: float, expected: NextTry
) -> None:
    assert (
        next_try(POLICY, tries=tries, elapsed_s=elapsed, retry_after_s=retry_after, unit=unit)
        == expected
    )


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(attempts=10, deadline_s=100.0, backoff_s=1.0)
    assert [policy.backoff(n, 1.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_one_attempt_never_retries() -> None:
    policy = RetryPolicy(attempts=1)
    assert next_try(policy, tries=1, elapsed_s=0, retry_after_s=None, unit=0.5).wait_s is None
    assert policy.worst_case_waits() == 0


def test_worst_case_waits_of_the_defaults() -> None:
    assert RetryPolicy().worst_case_waits() == 0.5 + 1.0 + 2.0
    assert RetryPolicy(attempts=20, deadline_s=30.0).worst_case_waits() == 30.0


NOW = 1_700_000_000.0

# (id, headers, expected seconds)
RETRY_AFTER_CASES: list[tuple[str, dict[str, str], float | None]] = [
    ("absent", {}, None),
    ("seconds", {"Retry-After": "5"}, 5.0),
    ("lower-case name, spaces", {"retry-after": " 2 "}, 2.0),
    ("fractional seconds", {"Retry-After": "1.5"}, 1.5),
    ("milliseconds first", {"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
    ("zero", {"Retry-After": "0"}, 0.0),
    ("negative is not sane", {"Retry-After": "-3"}, None),
    ("infinite is not sane", {"Retry-After": "inf"}, None),
    ("not a number or a date", {"Retry-After": "soon"}, None),
    ("bad milliseconds fall back to seconds", {"retry-after-ms": "x", "Retry-After": "4"}, 4.0),
    (
        "an HTTP date",
        {"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)},
        30.0,
    ),
    (
        "an HTTP date in the past",
        {"Retry-After": format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True)},
        0.0,
    ),
    ("a date without a zone", {"Retry-After": "Wed, 21 Oct 2015 07:28:00"}, None),
]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [c[1:] for c in RETRY_AFTER_CASES],
    ids=[c[0] for c in RETRY_AFTER_CASES],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(headers, NOW) == expected
