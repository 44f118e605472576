"""The guard's lock: the scan thread is served before workers that were waiting already."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from worktree_swarm.guard.lock import TurnLock


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_first_goes_ahead_of_waiting_workers_and_the_lock_is_reentrant() -> None:
    lock = TurnLock()
    order: list[str] = []

    def worker(name: str) -> None:
        with lock, lock:  # re-entrant
            order.append(name)

    def scan() -> None:
        with lock.first():
            order.append("scan")

    lock.acquire()
    workers = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for thread in workers:
        thread.start()
    wait_for(lambda: len(lock._cond._waiters) == 8, "workers waiting")  # type: ignore[attr-defined]
    scanner = threading.Thread(target=scan)
    scanner.start()
    wait_for(lambda: lock._first == 1, "the scan waiting")
    lock.release()
    for thread in [scanner, *workers]:
        thread.join(timeout=10)
    assert order[0] == "scan"
    assert sorted(order[1:]) == sorted(f"w{i}" for i in range(8))
    lock.acquire()  # free again
    lock.release()
