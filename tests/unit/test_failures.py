"""The retry policy's decisions after a failed handler call: pure, no I/O, no clock."""

from __future__ import annotations

import random

import pytest

from projector.model.failures import (
    OnExhausted,
    Park,
    PoisonEvent,
    Retry,
    RetryAfter,
    RetryPolicy,
    Stop,
)


def _ceiling(policy: RetryPolicy, attempt: int) -> float:
    return min(policy.cap, policy.base * 2.0 ** (attempt - 1))


def test_retry_delays_stay_within_a_doubling_ceiling_that_stops_at_the_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=10.0, max_attempts=100)
    rng = random.Random(20240601)

    for attempt in range(1, 10):
        delays = []
        for _ in range(300):
            decision = policy.decide(RuntimeError("down"), attempt, rng)
            assert isinstance(decision, Retry)
            delays.append(decision.delay)
        ceiling = _ceiling(policy, attempt)
        assert all(0 <= delay <= ceiling for delay in delays), attempt
        # Full jitter spreads the delays over the whole range up to the ceiling.
        assert max(delays) > 0.9 * ceiling
        assert min(delays) < 0.1 * ceiling
    assert [_ceiling(policy, n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_retry_delays_grow_on_average_with_each_failed_attempt() -> None:
    policy = RetryPolicy(base=0.1, cap=60.0, max_attempts=100)
    rng = random.Random(7)

    def mean_delay(attempt: int) -> float:
        delays = [policy.backoff(attempt, rng) for _ in range(500)]
        return sum(delays) / len(delays)

    means = [mean_delay(attempt) for attempt in range(1, 8)]
    assert means == sorted(means)
    assert means[-1] > 30 * means[0]


def test_a_seeded_random_gives_the_same_delays() -> None:
    policy = RetryPolicy(base=0.2, cap=5.0)

    first = [policy.backoff(n, random.Random(3)) for n in range(1, 6)]
    again = [policy.backoff(n, random.Random(3)) for n in range(1, 6)]

    assert first == again


@pytest.mark.parametrize(
    ("on_exhausted", "outcome"), [(OnExhausted.PARK, Park), (OnExhausted.STOP, Stop)]
)
def test_the_policy_gives_up_after_max_attempts_failed_calls_in_a_row(
    on_exhausted: OnExhausted, outcome: type[Park | Stop]
) -> None:
    policy = RetryPolicy(base=0.01, cap=1.0, max_attempts=4, on_exhausted=on_exhausted)
    error = RuntimeError("boom")

    decisions = [policy.decide(error, attempt) for attempt in range(1, 6)]

    assert [type(d) for d in decisions] == [Retry, Retry, Retry, outcome, outcome]
    given_up = decisions[3]
    assert isinstance(given_up, outcome)
    assert "4 times" in given_up.reason


def test_a_single_attempt_policy_gives_up_after_the_first_failure() -> None:
    policy = RetryPolicy(max_attempts=1)

    assert isinstance(policy.decide(RuntimeError("boom"), 1), Park)


def test_retry_after_sets_the_delay_instead_of_the_backoff() -> None:
    policy = RetryPolicy(base=0.01, cap=1.0, max_attempts=5)

    assert policy.decide(RetryAfter(0.25), 1) == Retry(0.25)
    assert policy.decide(RetryAfter(0.25, "rate limited"), 3) == Retry(0.25)
    # The handler knows best how long to wait, even beyond the policy's cap.
    assert policy.decide(RetryAfter(30), 2) == Retry(30)
    assert policy.decide(RetryAfter(-1), 1) == Retry(0.0)


def test_retry_after_still_counts_towards_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, on_exhausted=OnExhausted.STOP)

    assert isinstance(policy.decide(RetryAfter(0.1), 3), Stop)


def test_retry_after_names_its_delay_or_the_handlers_reason() -> None:
    assert str(RetryAfter(2.5)) == "retry after 2.5 s"
    assert str(RetryAfter(2.5, "quota exhausted")) == "quota exhausted"
    # The reason is the handler's words; the delay is still its 2.5 s.
    assert RetryPolicy(cap=1.0).decide(RetryAfter(2.5, "quota exhausted"), 1) == Retry(2.5)


@pytest.mark.parametrize(
    ("on_exhausted", "outcome"), [(OnExhausted.PARK, Park), (OnExhausted.STOP, Stop)]
)
def test_a_poison_event_gives_up_at_the_first_failure(
    on_exhausted: OnExhausted, outcome: type[Park | Stop]
) -> None:
    policy = RetryPolicy(max_attempts=8, on_exhausted=on_exhausted)

    decision = policy.decide(PoisonEvent("amount is not a number"), 1)

    assert isinstance(decision, outcome)
    assert "poison" in decision.reason
    assert "amount is not a number" in decision.reason


def test_on_exhausted_reads_the_setting_values() -> None:
    assert OnExhausted("park") is OnExhausted.PARK
    assert OnExhausted("stop") is OnExhausted.STOP
    with pytest.raises(ValueError, match="'retry'"):
        OnExhausted("retry")
