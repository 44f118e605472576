"""The gates' arithmetic with an injected clock: AIMD steps, window waits, providers apart."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from worktree_swarm.run.gate_model import WINDOW_MIN_SECONDS, GateView, Limit, Signal, limit_kind
from worktree_swarm.run.governor import TASK_BACKOFF_CAP, Gates

OK = Limit(signal=Signal.OK)
THROTTLE = Limit(signal=Signal.THROTTLE, detail="HTTP 429")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def gates(clock: Clock, jobs: int = 8, **kw: object) -> Gates:
    return Gates(jobs, clock=clock, backoff_base=4.0, rng=random.Random(1), **kw)  # type: ignore[arg-type]


def view(g: Gates, provider: str) -> GateView:
    return next(v for v in g.views() if v.provider == provider)


def overload(g: Gates, provider: str) -> float:
    """A throttle strong enough to cut: a whole attempt ended by it (weighs ``jobs`` requests)."""
    return g.report(provider, THROTTLE, whole_attempt=True, task="a")


def usage_window(g: Gates, provider: str, reset: float, *, detail: str = "usage limit") -> None:
    """A usage window two tasks' agents reported (one alone does not hold the provider)."""
    for task in ("a", "b"):
        g.report(provider, Limit(signal=Signal.WINDOW, retry_at=reset, detail=detail), task=task)


def take(g: Gates, provider: str, count: int) -> int:
    """Acquire without waiting until refused; how many slots were granted."""
    stop = threading.Event()
    granted = 0
    while granted < count and g.try_acquire(provider, stop) == "":
        granted += 1
    return granted


def test_a_throttle_halves_the_limit_once_per_cooldown(clock: Clock) -> None:
    g = gates(clock)
    overload(g, "anthropic")
    assert view(g, "anthropic").limit == 4
    # Throttles of requests that were already in flight: the same congestion event.
    for _ in range(5):
        overload(g, "anthropic")
    assert view(g, "anthropic").limit == 4
    clock.now += g.cooldown
    overload(g, "anthropic")
    assert view(g, "anthropic").limit == 2
    clock.now += g.cooldown
    overload(g, "anthropic")
    clock.now += g.cooldown
    overload(g, "anthropic")
    assert view(g, "anthropic").limit == 1  # never below one agent


def test_each_success_adds_one_over_the_limit(clock: Clock) -> None:
    g = gates(clock)
    overload(g, "anthropic")  # 8 -> 4
    for _ in range(4):
        g.report("anthropic", OK, task="a")  # 4 + 1/4 + 1/4.25 + ... = 4.92: not yet 5
    assert view(g, "anthropic").limit == 4
    g.report("anthropic", OK, task="a")
    assert view(g, "anthropic").limit == 5  # one step per window of successes
    for _ in range(100):
        g.report("anthropic", OK, task="a")
    assert view(g, "anthropic").limit == 8  # capped at jobs
    assert view(g, "anthropic").why == ""  # back to normal: nothing to explain


def test_a_whole_attempt_success_is_one_full_step(clock: Clock) -> None:
    g = gates(clock)
    overload(g, "other")
    g.report("other", OK, whole_attempt=True, task="a")
    assert view(g, "other").limit == 5


def test_launches_are_paced_while_recovering_not_frozen(clock: Clock) -> None:
    g = gates(clock)
    assert take(g, "anthropic", 8) == 8
    overload(g, "anthropic")  # limit 4, 8 running
    for _ in range(8):
        g.release("anthropic")
    assert take(g, "anthropic", 4) == 0  # a pause of one pace step after the throttle
    clock.now += g.pace
    assert take(g, "anthropic", 4) == 1  # then one launch per pace step
    clock.now += g.pace / 2
    assert take(g, "anthropic", 4) == 0
    clock.now += g.pace / 2
    assert take(g, "anthropic", 4) == 1
    assert g.pace == pytest.approx(4.0 / 8)  # the backoff base spread over jobs


def test_at_the_floor_further_throttles_back_off_exponentially(clock: Clock) -> None:
    g = gates(clock, jobs=2)
    overload(g, "google")  # 2 -> 1
    clock.now += g.cooldown
    until = overload(g, "google") - clock.now  # at the floor: backoff level 1
    assert 0 <= until <= 4.0
    waits = []
    for _ in range(6):
        clock.now += max(g.cooldown, until)
        waits.append(overload(g, "google") - clock.now)
    assert max(waits) <= 4.0 * 2**6
    assert max(waits) > 4.0  # jittered, but its ceiling doubles each time
    g.report("google", OK, task="a")
    clock.now += g.cooldown + 300
    assert overload(g, "google") - clock.now <= g.pace  # a success resets the backoff


def test_a_tasks_own_backoff_doubles_with_jitter_up_to_the_cap(clock: Clock) -> None:
    gate = gates(clock)  # backoff_base 4 s
    for streak in range(1, 12):
        ceiling = min(TASK_BACKOFF_CAP, 4.0 * 2 ** (streak - 1))
        drawn = [gate.task_backoff(streak) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in drawn)
        assert len(set(drawn)) > 1  # jittered: tasks throttled together come back apart
    assert gate.task_backoff(100) <= TASK_BACKOFF_CAP


def test_a_stated_retry_after_is_honoured(clock: Clock) -> None:
    g = gates(clock)
    until = g.report("anthropic", Limit(signal=Signal.THROTTLE, retry_at=clock.now + 20), task="a")
    assert until == clock.now + 20
    assert take(g, "anthropic", 1) == 0
    clock.now += 20
    assert take(g, "anthropic", 1) == 1


def test_a_usage_window_holds_its_provider_until_the_reset(clock: Clock) -> None:
    g = gates(clock)
    reset = clock.now + 3 * 3600
    usage_window(g, "anthropic", reset)
    assert g.window_until("anthropic") == reset
    assert take(g, "anthropic", 1) == 0
    assert view(g, "anthropic").waiting_until == reset
    assert view(g, "anthropic").limit == 8  # a window is not congestion: no cut
    stop = threading.Event()
    assert g.acquire("anthropic", stop, leave_on_window=True) == "window"
    clock.now = reset
    assert g.window_until("anthropic") is None
    assert take(g, "anthropic", 1) == 1


def test_a_waiter_gives_up_on_a_window_past_its_max_wait(clock: Clock) -> None:
    g = gates(clock, jobs=1)
    stop = threading.Event()
    assert g.acquire("anthropic", stop) == ""  # the only slot: the next one waits
    results: list[str] = []
    waiter = threading.Thread(
        target=lambda: results.append(g.acquire("anthropic", stop, max_wait=3600))
    )
    waiter.start()
    reset = clock.now + 3601  # another task's agent meets a usage window meanwhile
    usage_window(g, "anthropic", reset)
    waiter.join(timeout=30)
    assert results == ["max_wait"]
    assert g.try_acquire("anthropic", stop, max_wait=3601) is None  # within it: waits
    assert g.acquire("anthropic", stop, max_wait=3600, leave_on_window=True) == "window"


def test_a_success_ends_a_window_only_reported_live(clock: Clock) -> None:
    g = gates(clock)
    window = Limit(signal=Signal.WINDOW, retry_at=clock.now + 3600, detail="usage limit")
    g.report("anthropic", window, task="a")  # from running agents' streams
    g.report("anthropic", window, task="b")
    assert g.window_until("anthropic") == clock.now + 3600
    g.report("anthropic", OK, task="c")  # ... one of whose requests was served after all
    assert g.window_until("anthropic") is None
    assert view(g, "anthropic").why == ""
    g.report("anthropic", window, task="a")
    g.report("anthropic", window, task="b", whole_attempt=True)  # b's attempt ended on it
    g.report("anthropic", OK, task="c")  # a request of another agent, in flight
    assert g.window_until("anthropic") == clock.now + 3600
    g.report("anthropic", window, task="a")  # told live again: still confirmed
    g.report("anthropic", OK, task="c", whole_attempt=True)
    assert g.window_until("anthropic") == clock.now + 3600


def test_a_window_one_task_alone_states_is_an_ordinary_throttle_for_the_others(
    clock: Clock,
) -> None:
    g = gates(clock)
    stop = threading.Event()
    reset = clock.now + 5 * 3600
    window = Limit(signal=Signal.WINDOW, retry_at=reset, detail="usage limit")
    g.report("other", window, task="a", whole_attempt=True)  # a command agent's attempt
    g.report("other", window, task="a")  # told again, and a's own 429: no confirmation
    g.report("other", THROTTLE, task="a")
    assert g.window_until("other") is None
    assert view(g, "other").why == "usage limit, one task only: unconfirmed"
    assert view(g, "other").limit == 4  # one cut, as for a whole attempt's 429
    clock.now += g.pace  # the ordinary pacing, not five hours
    assert g.try_acquire("other", stop, max_wait=60, leave_on_window=True) == ""
    g.report("other", THROTTLE, task="b")  # another task limited too: the window is real
    assert g.window_until("other") == reset
    assert view(g, "other").why == "usage limit"
    assert g.try_acquire("other", stop, max_wait=60) == "max_wait"


def test_a_window_a_resumed_run_recalls_throttles_nothing_until_another_task_confirms_it(
    clock: Clock,
) -> None:
    # The manager that was told it throttled the provider then; a resumed one's fresh gate
    # takes the claim back without throttling again (at one job: a floor backoff for all).
    g = gates(clock, jobs=1)
    stop = threading.Event()
    reset = clock.now + 250  # its end near now: no throttle with that reset either
    window = Limit(signal=Signal.WINDOW, retry_at=reset, detail="usage limit")
    g.report("other", window, task="a", recalled=True)
    assert g.window_until("other") is None
    assert g.try_acquire("other", stop, max_wait=60, leave_on_window=True) == ""
    g.release("other")
    g.report("other", THROTTLE, task="b")  # another task limited: the window is real
    assert g.window_until("other") == reset


def test_after_a_success_only_another_tasks_window_confirms_a_lone_one(clock: Clock) -> None:
    g = gates(clock)
    reset = clock.now + 5 * 3600
    late = Limit(signal=Signal.WINDOW, retry_at=reset + 3600)
    g.report("other", late, task="a", whole_attempt=True)
    g.report("other", OK, task="c", whole_attempt=True)  # the provider served c meanwhile
    g.report("other", THROTTLE, task="b")  # so a 429 of b's does not make a's window real
    assert g.window_until("other") is None
    g.report("other", Limit(signal=Signal.WINDOW, retry_at=reset), task="b")  # b's own does
    assert g.window_until("other") == reset  # the reset stated since the success


def test_providers_are_independent(clock: Clock) -> None:
    g = gates(clock, jobs=4)
    usage_window(g, "anthropic", clock.now + 7200)
    overload(g, "openai")
    assert take(g, "google", 4) == 4  # neither limit slows google
    for _ in range(4):
        g.release("google")
    assert view(g, "google").limit == 4
    assert take(g, "anthropic", 1) == 0
    assert view(g, "openai").limit == 2


def test_jobs_bounds_all_providers_together(clock: Clock) -> None:
    g = gates(clock, jobs=3)
    assert take(g, "anthropic", 2) == 2
    assert take(g, "openai", 3) == 1
    g.release("anthropic")
    assert take(g, "google", 3) == 1


def test_not_before_delays_one_task_only(clock: Clock) -> None:
    g = gates(clock)
    stop = threading.Event()
    assert g.try_acquire("anthropic", stop, not_before=clock.now + 5) is None
    assert g.try_acquire("anthropic", stop) == ""
    assert g.waiting_until("anthropic", not_before=clock.now + 5) == clock.now + 5


def test_budget_share_and_budget(clock: Clock) -> None:
    g = gates(clock, max_cost_usd=10.0, budget_share=0.5)
    stop = threading.Event()
    assert g.try_acquire("anthropic", stop) == ""
    g.release("anthropic", cost_usd=4.0)
    assert not g.economy
    assert g.try_acquire("anthropic", stop) == ""
    g.release("anthropic", cost_usd=1.0)
    assert g.economy
    assert not g.over_budget
    assert g.try_acquire("anthropic", stop) == ""
    g.release("anthropic", cost_usd=5.0)
    assert g.try_acquire("anthropic", stop) == "budget"


def test_observer_hears_changes_not_every_launch(clock: Clock) -> None:
    seen: list[GateView] = []
    g = gates(clock, on_change=seen.append)
    take(g, "anthropic", 3)
    g.release("anthropic")
    assert [v.limit for v in seen] == [8]  # the first sight of a provider only
    overload(g, "anthropic")
    assert (seen[-1].limit, seen[-1].why) == (4, "throttled: HTTP 429")
    usage_window(g, "anthropic", clock.now + 3600, detail="x")
    assert seen[-2].why == "x, one task only: unconfirmed"
    assert seen[-1].why == "x"
    assert "launches wait until" in seen[-1].describe(now=clock.now)


@pytest.mark.parametrize(
    ("delay", "kind"),
    [(None, Signal.THROTTLE), (30.0, Signal.THROTTLE), (WINDOW_MIN_SECONDS, Signal.WINDOW)],
)
def test_limit_kind_from_the_stated_reset(delay: float | None, kind: Signal) -> None:
    now = 1000.0
    retry_at = None if delay is None else now + delay
    assert limit_kind(retry_at=retry_at, now=now) is kind


def test_acquire_wakes_on_release_and_on_stop(clock: Clock) -> None:
    g = gates(clock, jobs=1)
    stop = threading.Event()
    assert g.acquire("anthropic", stop) == ""
    results: list[str] = []
    waiter = threading.Thread(target=lambda: results.append(g.acquire("anthropic", stop)))
    waiter.start()
    g.release("anthropic")
    waiter.join(timeout=30)
    assert results == [""]
    other = threading.Thread(target=lambda: results.append(g.acquire("anthropic", stop)))
    other.start()
    stop.set()
    other.join(timeout=30)
    assert results == ["", "stopped"]


def test_a_minority_of_throttles_among_successes_cuts_nothing(clock: Clock) -> None:
    # 30% of requests answered 429, retried by the agents: not overload.
    g = gates(clock)
    for i in range(100):
        clock.now += 0.05
        g.report("anthropic", THROTTLE if i % 10 < 3 else OK, task="a")
    assert view(g, "anthropic").limit == 8
    # Then most outcomes throttled: overload, cut.
    for _ in range(60):
        clock.now += 0.05
        g.report("anthropic", THROTTLE, task="a")
    assert view(g, "anthropic").limit < 8
    assert view(g, "anthropic").why == "throttled: HTTP 429"


def test_old_successes_fade_with_the_cooldown(clock: Clock) -> None:
    g = gates(clock)
    for _ in range(50):
        g.report("anthropic", OK, task="a")
    overload(g, "anthropic")
    assert view(g, "anthropic").limit == 8  # one failed attempt against 50 fresh successes
    clock.now += 10 * g.cooldown  # the successes are long past
    overload(g, "anthropic")
    assert view(g, "anthropic").limit == 4


def test_per_request_throttles_cut_once_they_outweigh_jobs_assumed_successes(
    clock: Clock,
) -> None:
    g = gates(clock)  # jobs 8: a cut needs throttles >= 0.4 x (throttles + successes + 8)
    for _ in range(5):
        g.report("anthropic", THROTTLE, task="a")
    assert view(g, "anthropic").limit == 8  # five retried 429s: noise
    g.report("anthropic", THROTTLE, task="a")
    assert view(g, "anthropic").limit == 4  # the sixth: 6 / 14 of recent outcomes


def test_a_freed_slot_goes_to_the_best_ranked_waiter_not_the_first(clock: Clock) -> None:
    # jobs = 1, a slot taken; a low-ranked task starts waiting before a higher-ranked one
    # (it was provisioned sooner): the release goes to the higher-ranked.
    g = gates(clock, jobs=1)
    stop = threading.Event()
    assert g.acquire("anthropic", stop) == ""
    order: list[str] = []
    done = threading.Event()

    def wait(name: str, rank: tuple[int, ...]) -> None:
        assert g.acquire("anthropic", stop, rank=rank) == ""
        order.append(name)
        done.wait(timeout=30)
        g.release("anthropic")

    low = threading.Thread(target=wait, args=("low", (0, -1, 5)))
    low.start()
    wait_until(lambda: g.waiters == 1)
    high = threading.Thread(target=wait, args=("high", (0, -9, 1)))
    high.start()
    wait_until(lambda: g.waiters == 2)
    assert g.try_acquire("anthropic", stop, rank=(9,)) is None  # full, and others are ahead
    g.release("anthropic")
    wait_until(lambda: order == ["high"])
    assert g.waiters == 1  # low still waits: one slot
    done.set()
    for thread in (low, high):
        thread.join(timeout=30)
    assert order == ["high", "low"]


def test_a_better_ranked_waiter_held_by_its_own_wait_does_not_hold_others(
    clock: Clock,
) -> None:
    # The best-ranked waiter may not start yet (a backoff of its own): the slot is not kept
    # idle for it.
    g = gates(clock, jobs=1)
    stop = threading.Event()
    results: list[str] = []
    held = threading.Thread(
        target=lambda: results.append(
            g.acquire("anthropic", stop, not_before=clock.now + 60, rank=(0,))
        )
    )
    held.start()
    wait_until(lambda: g.waiters == 1)
    assert g.acquire("anthropic", stop, rank=(5,)) == ""
    stop.set()
    held.join(timeout=30)
    assert results == ["stopped"]


def test_a_slot_is_held_for_a_better_ranked_task_expected_until_it_asks_or_is_forgotten(
    clock: Clock,
) -> None:
    # jobs = 1: a task launched ahead of another is still being provisioned when the other
    # asks; the slot waits for the first (it asks), then for nobody (forgotten).
    g = gates(clock, jobs=1)
    stop = threading.Event()
    g.expect((0, 0, 1), "anthropic")
    assert g.try_acquire("anthropic", stop, rank=(0, 0, 2)) is None  # free, but not its turn
    granted: list[str] = []
    low = threading.Thread(
        target=lambda: granted.append(g.acquire("anthropic", stop, rank=(0, 0, 2)))
    )
    low.start()
    wait_until(lambda: g.waiters == 1)
    assert g.try_acquire("anthropic", stop, rank=(0, 0, 1)) == ""  # the expected one asks
    assert granted == []
    g.expect((0, 0, 0), "anthropic")  # another, better still, launched meanwhile
    g.release("anthropic")
    assert g.try_acquire("anthropic", stop, rank=(0, 0, 5)) is None
    assert granted == []
    g.forget((0, 0, 0))  # its setup runs: the waiter need not wait for it
    low.join(timeout=30)
    assert granted == [""]


def test_a_better_ranked_task_expected_holds_only_the_slots_it_would_take(clock: Clock) -> None:
    # jobs = 2, one better-ranked task expected: one slot is still free for a worse one, and
    # another provider's task expected holds the run's slots, not this provider's alone.
    g = gates(clock, jobs=2)
    stop = threading.Event()
    g.expect((0, 0, 0), "openai")
    assert g.try_acquire("anthropic", stop, rank=(0, 0, 1)) == ""
    assert g.try_acquire("anthropic", stop, rank=(0, 0, 2)) is None  # the last is openai's
    assert g.try_acquire("openai", stop, rank=(0, 0, 0)) == ""


def wait_until(condition: Callable[[], bool]) -> None:
    """Until *condition* holds (the threads under test reach their waits), at most 30 s."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
