"""The guard's locks: the scan thread goes first; hand-overs racing scans misjudge nothing."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard.lock import TurnLock
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
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


def _conditions(lock: TurnLock) -> list[threading.Condition]:
    return [c for c in vars(lock).values() if isinstance(c, threading.Condition)]


def _waiting(lock: TurnLock) -> int:
    return sum(len(c._waiters) for c in _conditions(lock))  # type: ignore[attr-defined]


def _queue_up(lock: TurnLock, names: list[str], take: Callable[[str], None]) -> None:
    """Start a thread per name that takes the lock by *take*, each once the last waits."""
    for count, name in enumerate(names, start=1):
        threading.Thread(target=take, args=(name,), name=name, daemon=True).start()
        wait_for(lambda n=count: _waiting(lock) == n, f"{name} waiting")


@pytest.mark.parametrize("interrupted", [False, True], ids=["plain", "a-waiter-interrupted"])
def test_each_release_wakes_only_the_waiter_whose_turn_it_is(interrupted: bool) -> None:
    # Every release woke every waiter: dozens of workers woke (and took a look) per hand-over
    # only to find the lock taken again. None may be left waiting with the lock free either.
    lock = TurnLock()
    waits: list[str] = []
    order: list[str] = []
    workers = [f"w{i}" for i in range(12)]
    scans = ["s0", "s1"]
    everyone = workers[:6] + scans[:1] + workers[6:] + scans[1:]
    left = [len(everyone)]
    fired = threading.Event()
    for cond in _conditions(lock):

        def counted(*args: float | None, _wait: Callable[..., bool] = cond.wait) -> bool:
            woken = _wait(*args)
            waits.append(threading.current_thread().name)
            if interrupted and threading.current_thread().name == "w0" and not fired.is_set():
                fired.set()  # as a stop signal landing as it was woken
                order.append("w0 interrupted")
                left[0] -= 1
                raise KeyboardInterrupt
            return woken

        cond.wait = counted  # type: ignore[method-assign]
    ended: dict[str, threading.Event] = {}

    def take(name: str) -> None:
        ended[name] = threading.Event()
        try:
            with lock.first() if name in scans else lock:
                order.append(name)
                left[0] -= 1
                # Hold it until every other waiter woken meanwhile has gone back to waiting.
                wait_for(lambda: _waiting(lock) == left[0], "the others waiting again")
        except KeyboardInterrupt:
            assert name == "w0"  # on record already
        ended[name].set()

    lock.acquire()
    _queue_up(lock, everyone, take)
    lock.release()
    for name in everyone:
        assert ended[name].wait(timeout=60), f"{name} never had its turn: {order}"
    # The scans first, then the workers in the order they came (w0 passing its turn on).
    if interrupted:
        assert order == ["s0", "s1", "w0 interrupted", *workers[1:]]
    else:
        assert order == ["s0", "s1", *workers]
    # Each waited once: woken only for its turn.
    assert sorted(waits) == sorted(everyone)
    lock.acquire()  # free again
    lock.release()


class _SignalOnceTaken(threading.Condition):
    """The lock's condition, whose first exit once the lock has an owner raises, as a stop
    signal's handler does in the main thread wherever it is."""

    def __init__(self, turn: TurnLock) -> None:
        super().__init__(getattr(turn, "_mutex", None) or threading.Lock())
        self.turn = turn
        self.fired = False

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if not self.fired and exc[0] is None and self.turn._owner is not None:
            self.fired = True
            raise KeyboardInterrupt


@pytest.mark.parametrize("way", ["with", "first"])
def test_a_stop_signal_as_the_lock_is_taken_leaves_it_to_the_other_threads(way: str) -> None:
    # Taken, then interrupted before the block held it: its release never ran, and every
    # other thread (a task's end, the run's stop waiting for it) waited for ever.
    lock = TurnLock()
    lock._cond = _SignalOnceTaken(lock)
    with pytest.raises(KeyboardInterrupt), lock if way == "with" else lock.first():
        pass
    assert lock._cond.fired
    taken = threading.Event()

    def take() -> None:
        with lock:
            taken.set()

    other = threading.Thread(target=take, daemon=True)
    other.start()
    other.join(timeout=60)  # a bound on a hang: it takes the lock at once
    assert taken.is_set()


def test_hand_overs_racing_scans_and_checks_blame_nobody_and_miss_nothing(
    tmp_path: Path,
) -> None:
    """Workers hand worktrees over while the scan thread and the checks after attempts run.

    An agent counts as running throughout, so a branch or worktree the guard misjudged while
    a hand-over raced a scan would be reported with it as suspect. Afterwards every branch and
    worktree is watched: a move or write there is caught.
    """
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    tasks = [f"t{i}" for i in range(12)]
    paths = {}
    for task in tasks:
        paths[task] = tmp_path / "wt" / task
        git(repo, "worktree", "add", "-q", "-b", f"swarm/{task}", str(paths[task]))
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    identity = identity_of(os.getpid())
    assert identity is not None
    guard.agent_started("rogue", identity)
    done = threading.Event()

    def scans() -> None:
        while not done.is_set():
            guard.scan()

    def work(task: str) -> None:
        path = paths[task]
        for round_ in range(3):  # three attempts, each checked and handed over
            with guard.busy(task, path):
                (path / f"{task}.txt").write_text(f"{task} {round_}\n")
                git(path, "add", "-A")
                git(path, "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qm", "w")
                guard.after_attempt()

    scanner = threading.Thread(target=scans)
    scanner.start()
    workers = [threading.Thread(target=work, args=(task,)) for task in tasks]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    done.set()
    scanner.join()
    assert guard.scan() == []
    assert guard.drain() == []
    assert guard.drain_failures() == []
    # Handed over for good: the rogue's commit on a branch and write in a worktree are caught.
    victim = paths["t3"]
    git(victim, "-c", "user.name=r", "-c", "user.email=r@r", "commit", "-q", "--allow-empty",
        "-m", "rogue")  # fmt: skip
    (paths["t7"] / "t7.txt").write_text("rogue\n")
    found = guard.scan()
    assert sorted(v.where for v in found) == ["t3", "t7"]
    assert all(v.suspects == ("rogue",) and v.restored for v in found)
    assert (paths["t7"] / "t7.txt").read_text() == "t7 2\n"


def packed_objects(*places: Path) -> set[str]:
    """The names of the objects in the packs (an index file, or a directory of them)."""
    found = set()
    for place in places:
        for idx in [place] if place.is_file() else place.glob("*.idx"):
            with idx.open("rb") as f:
                out = subprocess.run(["git", "show-index"], stdin=f, capture_output=True,
                                     text=True, check=True).stdout  # fmt: skip
            found |= {line.split()[1] for line in out.splitlines()}
    return found


def test_tasks_that_finish_together_share_one_pack_of_their_work(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    paths = {f"t{i}": tmp_path / "wt" / f"t{i}" for i in range(3)}
    for task, path in paths.items():
        git(repo, "worktree", "add", "-q", "-b", f"swarm/{task}", str(path))
    work = tmp_path / "g"
    guard = Guard(open_repo(repo), work_dir=work, restore=True)
    guard.start()
    packs_before = set(work.rglob("keep-*.idx"))

    def finish(task: str) -> None:
        path = paths[task]
        with guard.busy(task, path):
            (path / f"{task}.txt").write_text(f"{task}\n")
            git(path, "add", "-A")
            git(path, "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qm", task)
        # Leaving `busy` hands the worktree over: its branch's work is packed first.

    guard._keep_lock.acquire()  # a pack in progress
    threads = [threading.Thread(target=finish, args=(task,)) for task in paths]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(guard._queued) == len(paths), "every task waiting for the pack")
    guard._keep_lock.release()
    for thread in threads:
        thread.join(timeout=30)
    new = set(work.rglob("keep-*.idx")) - packs_before
    assert len(new) == 1  # one pack-objects for the three
    packed = packed_objects(*new)
    for task in paths:
        assert git(repo, "rev-parse", f"swarm/{task}") in packed
    assert guard.scan() == []
    assert guard.drain_failures() == []


def test_a_broken_tip_in_a_shared_pack_costs_the_others_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    git(repo, "switch", "-q", "-c", "swarm/good")
    (repo / "good.txt").write_text("good\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qm", "good")
    good = git(repo, "rev-parse", "HEAD")
    git(repo, "switch", "-q", "main")
    # Another task's tip whose objects an agent deleted, queued before ours.
    broken = "1" * 40
    guard._queued["refs/heads/swarm/broken"] = broken
    refs = {"refs/heads/main": git(repo, "rev-parse", "main"), "refs/heads/swarm/good": good}
    guard._keep_task_work(refs, tmp_path / "g" / "keep", only="refs/heads/swarm/good")
    assert guard._packed == {"refs/heads/swarm/good": good}
    assert good in packed_objects(tmp_path / "g" / "keep")


@pytest.mark.parametrize("new_branch", [True, False], ids=["made", "moved"])
def test_a_task_handed_over_while_no_file_can_be_opened_keeps_its_branch(
    tmp_path: Path, new_branch: bool
) -> None:
    """Out of file descriptors, the guard read no tip when the task ended, and its next scan
    took the task's branch for another agent's doing: deleted (its commit on no branch), or,
    moved, put back from before the task's commit."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    path = tmp_path / "wt" / "t"
    if not new_branch:
        git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(path))
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    identity = identity_of(os.getpid())
    assert identity is not None
    guard.agent_started("other", identity)  # another task's agent runs meanwhile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with guard.busy("t", path):
            if new_branch:
                git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(path))
            (path / "t.txt").write_text("work\n")
            git(path, "add", "-A")
            git(path, "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qm", "work")
            tip = git(path, "rev-parse", "HEAD")
            lowest_free = os.dup(0)
            os.close(lowest_free)
            # From here no file opens, no pipe is made, no git starts (EMFILE): the hand-over.
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert guard.drain_failures(), "no read failed: this tests nothing"
    assert guard.scan() == []
    assert git(repo, "rev-parse", "refs/heads/swarm/t") == tip
    guard.close()
