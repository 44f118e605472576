"""Work done several at once, read back in order."""

from __future__ import annotations

import threading

import pytest

from worktree_swarm.infra import parallel


def test_results_come_in_order_from_work_done_at_once() -> None:
    met = threading.Barrier(2, timeout=30)  # broken unless two items run at the same time

    def square(n: int) -> int:
        if n < 2:
            met.wait()
        return n * n

    assert list(parallel.in_order(square, range(20), workers=2)) == [n * n for n in range(20)]


def test_a_failure_reaches_the_reader_at_its_items_turn() -> None:
    def fail_at_5(n: int) -> int:
        if n == 5:
            raise ValueError("item 5")
        return n

    results = parallel.in_order(fail_at_5, range(20), workers=3)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="item 5"):
        next(results)


def test_a_reader_that_stops_leaves_only_a_few_items_to_finish() -> None:
    done: list[int] = []
    lock = threading.Lock()

    def record(n: int) -> int:
        with lock:
            done.append(n)
        return n

    results = parallel.in_order(record, range(1000), workers=2)
    assert next(results) == 0
    results.close()
    assert len(done) <= 1 + 2 * 2 + 1  # the one read, those queued ahead, one being added


def test_one_worker_or_one_item_runs_in_the_callers_thread() -> None:
    caller = threading.get_ident()
    assert list(parallel.in_order(lambda _: threading.get_ident(), [1], workers=4)) == [caller]
    assert set(parallel.in_order(lambda _: threading.get_ident(), [1, 2], workers=1)) == {caller}
