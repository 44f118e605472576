"""Where a task's attempts stand after a restart: retries used, backoff streak, instruction."""

from __future__ import annotations

import time
from pathlib import Path

from tests.test_store import MANAGER
from worktree_swarm.agents.base import AgentOutcome, AgentResult
from worktree_swarm.core.task import Task
from worktree_swarm.git.diffs import DiffStat
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptRow
from worktree_swarm.run.course import RESUME_PROMPT, Course, free_throttles
from worktree_swarm.run.governor import Gates


def add_run(store: Store, task: Task) -> None:
    """Record run ``r1`` holding *task* (branch ``swarm/a``)."""
    store.create_run(
        run_id="r1", base_commit="abc", repo_root="/repo", jobs=1, manager=MANAGER,
        spec_json="{}", created_at=1.0,
    )  # fmt: skip
    store.add_tasks("r1", [(task, "swarm/a", "/wt/a")])


def limited(store: Store, task: str, number: int, *, window: bool) -> None:
    """Record attempt *number* of *task* as rate limited, its wait a window's or not."""
    attempt = store.record_attempt("r1", task, number=number, identity=MANAGER, log_path="/l")
    store.end_attempt(attempt, exit_code=1, outcome="rate_limited")
    store.set_retry_at("r1", task, number, 1000.0 + number, window=window)


def test_a_usage_window_s_wait_uses_no_retry_nor_counts_as_a_throttle(tmp_path: Path) -> None:
    # Two throttles and a window between them: a resumed manager sees two retries used, not
    # three, and a backoff streak of two (the window neither counts nor breaks it).
    task = Task(id="a", prompt="do a", retries=5)
    with Store(tmp_path / "state.db") as store:
        add_run(store, task)
        limited(store, "a", 1, window=False)
        limited(store, "a", 2, window=True)
        limited(store, "a", 3, window=False)
        previous = store.attempts("r1", "a")
    assert [a.usage_window for a in previous] == [False, True, False]
    course = Course.resumed(task, previous)
    assert course.retries_left == 3
    assert course.throttles == 2
    assert course.prompt == RESUME_PROMPT


def test_a_throttle_that_got_work_done_ends_the_backoff_streak_a_resumed_manager_counts(
    tmp_path: Path,
) -> None:
    # As the live course: an attempt that got work done before its limit starts the streak
    # again. A resumed manager counted it in: its task's backoff doubled for every one of them.
    task = Task(id="a", prompt="do a", retries=5)
    gate = Gates(4, backoff_base=0.01)
    throttle = AgentResult(outcome=AgentOutcome.RATE_LIMITED)
    live = Course.resumed(task, [])
    with Store(tmp_path / "state.db") as store:
        add_run(store, task)
        for number, progressed in enumerate((False, False, True, False), start=1):
            live.throttled(
                task, throttle, gate, provider="p", replayed=False, progressed=progressed
            )
            attempt = store.record_attempt(
                "r1", "a", number=number, identity=MANAGER, log_path="/l"
            )
            store.end_attempt(attempt, exit_code=1, outcome="rate_limited")
            store.set_retry_at("r1", "a", number, 1000.0, progressed=live.got_work_done)
        resumed = Course.resumed(task, store.attempts("r1", "a"))
    assert live.throttles == resumed.throttles == 1
    assert live.retries_left == resumed.retries_left == 2


def test_an_instruction_is_asked_again_after_the_resume_prompt() -> None:
    task = Task(id="a", prompt="do a")
    course = Course.resumed(task, [], instruction="The checks on your work failed.")
    assert course.prompt == f"{RESUME_PROMPT}\n\nThe checks on your work failed."
    assert course.pending == "The checks on your work failed."


def test_an_edit_that_keeps_the_counts_is_progress() -> None:
    # A line rewritten again (or a binary file): the counts stay, what the files hold does not.
    course = Course.resumed(Task(id="a", prompt="do a"), [])
    assert course.progressed(DiffStat(files=1, insertions=1, deletions=0, content="b1"))
    assert course.progressed(DiffStat(files=1, insertions=1, deletions=0, content="b2"))
    assert not course.progressed(DiffStat(files=1, insertions=1, deletions=0, content="b2"))


def test_a_stated_reset_already_past_leaves_the_tasks_own_backoff() -> None:
    # A clock a minute ahead of the API's: "resets 8:41pm" when it is 8:42 here.
    task = Task(id="a", prompt="do a", retries=5)
    gate = Gates(4, backoff_base=30.0)
    before = time.time()
    for retry_at in (before - 60, None):
        course = Course.resumed(task, [])
        throttle = AgentResult(outcome=AgentOutcome.RATE_LIMITED, retry_at=retry_at)
        assert (
            course.throttled(task, throttle, gate, provider="p", replayed=False, progressed=False)
            is None
        )
        assert course.not_before >= before + 15  # half of the first backoff's 30 s at least
    ahead = AgentResult(outcome=AgentOutcome.RATE_LIMITED, retry_at=before + 5)
    course = Course.resumed(task, [])
    course.throttled(task, ahead, gate, provider="p", replayed=False, progressed=False)
    assert course.not_before == before + 5  # a stated one still in the future is kept


def test_a_replayed_wait_already_over_resumes_at_once() -> None:
    # The manager died while the task rested; it is resumed after the recorded wait ended.
    task = Task(id="a", prompt="do a", retries=5)
    before = time.time()
    rested = AttemptRow(
        id=1, run_id="r1", task_id="a", number=1, pid=1, create_time=1.0, pgid=1,
        started_at=before - 600, ended_at=before - 590, exit_code=1, outcome="rate_limited",
        log_path="/l", retry_at=before - 300, usage_window=False,
    )  # fmt: skip
    throttle = AgentResult(outcome=AgentOutcome.RATE_LIMITED, retry_at=rested.retry_at)
    course = Course.resumed(task, [rested])  # a backoff streak of one: a new wait would be 15-30s
    gate = Gates(4, backoff_base=30.0)
    course.throttled(task, throttle, gate, provider="p", replayed=True, progressed=False)
    assert course.not_before <= time.time()  # no new backoff on top of the one that ran out


def test_an_agent_retried_after_its_timeout_or_a_stop_is_told_so(tmp_path: Path) -> None:
    # "You were interrupted (rate limit or restart)" told a timed-out agent nothing of why.
    task = Task(id="a", prompt="do a")
    with Store(tmp_path / "state.db") as store:
        add_run(store, task)
        prompts = []
        for number, outcome in enumerate(("timed_out", "stopped", "rate_limited"), start=1):
            attempt = store.record_attempt(
                "r1", "a", number=number, identity=MANAGER, log_path="/l"
            )
            store.end_attempt(attempt, exit_code=None, outcome=outcome)
            prompts.append(Course.resumed(task, store.attempts("r1", "a")).prompt)
    assert prompts[0] is not None
    assert prompts[0].startswith("Your previous attempt was stopped: it ran past its time limit.")
    assert prompts[1] is not None
    assert prompts[1].startswith("Your previous attempt was stopped by the user.")
    assert prompts[2] == RESUME_PROMPT


def test_a_ray_coordinator_resumed_recalls_a_replayed_window_without_a_second_throttle() -> None:
    # A previous coordinator's attempt that ended on a usage window (replayed from the store):
    # its throttle was applied when it was told; the resumed coordinator's fresh gate halved
    # the provider's concurrency once more for it, as for a new, unconfirmed window.
    from worktree_swarm.run.ray_attempt import Throttled  # noqa: PLC0415
    from worktree_swarm.run.ray_exec import RayTaskWorker  # noqa: PLC0415

    worker = object.__new__(RayTaskWorker)
    worker.gate = Gates(4)
    worker._resting = lambda *_: None  # type: ignore[method-assign]
    task = Task(id="a", prompt="do a", agent="claude")
    reset = time.time() + 3600
    result = AgentResult(outcome=AgentOutcome.RATE_LIMITED, reason="usage limit", retry_at=reset)
    replayed = Throttled(result=result, progressed=False, replayed=True, window=True)
    course = Course.resumed(task, [])
    assert worker._rate_limited(task, 1, replayed, course) is None
    (gate,) = worker.gate.views()
    assert gate.limit == 4
    assert course.not_before == reset


def test_a_ray_coordinator_spends_a_retry_on_a_replayed_limit_its_killed_manager_left_undecided(
    tmp_path: Path,
) -> None:
    # The manager recorded the attempt's end and was killed before its wait: no retry of it
    # is counted in the store, so the one that replays it counts it, as a local resume does.
    # Counted as already spent, a task with no retries left was resumed all the same.
    import threading  # noqa: PLC0415

    from tests.conftest import git, make_repo  # noqa: PLC0415
    from worktree_swarm.git.repo import open_repo  # noqa: PLC0415
    from worktree_swarm.run.ray_attempt import Throttled  # noqa: PLC0415
    from worktree_swarm.run.ray_exec import RayTaskWorker  # noqa: PLC0415
    from worktree_swarm.run.run_worker import Live  # noqa: PLC0415

    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "swarm/a", "main")
    base = git(repo, "rev-parse", "main")
    worker = object.__new__(RayTaskWorker)
    worker.repo, worker.url, worker._git_lock = open_repo(repo), str(repo), threading.Lock()
    worker.gate = Gates(4)
    worker._resting = lambda *_: None  # type: ignore[method-assign]
    log = tmp_path / "attempt-1.log"
    log.write_text("")  # no reset stated
    outcomes = []
    for retries, decided in ((0, False), (1, True)):
        task = Task(id="a", prompt="do a", retries=retries)
        with Store(tmp_path / f"state-{retries}.db") as store:
            add_run(store, task)
            attempt = store.record_attempt("r1", "a", number=1, identity=MANAGER, log_path=str(log))
            store.end_attempt(attempt, exit_code=1, outcome="rate_limited")
            if decided:  # its wait on record: its retry was spent by its manager
                store.set_retry_at("r1", "a", 1, time.time() - 1, window=False)
            (row,) = store.attempts("r1", "a")
            worker.store, worker.run_id = store, "r1"
            course = Course.resumed(task, [row])
            ended = worker._replay(Live(task=task, port_slot=None), course, base, row)
        assert isinstance(ended, Throttled)
        outcomes.append(worker._rate_limited(task, 1, ended, course))
    assert outcomes[0] is not None
    assert outcomes[0].startswith("rate limited and out of retries")
    assert outcomes[1] is None  # its one retry, spent before: not spent twice


def test_attempts_on_a_full_disk_are_tried_again_a_few_times_and_since_a_retry_only(
    tmp_path: Path,
) -> None:
    # An agent that fills the disk itself every time must not be started again forever; a
    # resumed manager counts the tries the recorded ones used, and `swarm retry` starts anew.
    task = Task(id="a", prompt="do a")
    with Store(tmp_path / "state.db") as store:
        add_run(store, task)
        lefts = [Course.resumed(task, []).disk_retries_left]
        for number in range(1, 4):
            attempt = store.record_attempt(
                "r1", "a", number=number, identity=MANAGER, log_path="/l"
            )
            store.end_attempt(attempt, exit_code=1, outcome="disk_full")
            lefts.append(Course.resumed(task, store.attempts("r1", "a")).disk_retries_left)
        previous = store.attempts("r1", "a")
    assert lefts == [3, 2, 1, 0]
    assert Course.resumed(task, previous, since=previous[2:]).disk_retries_left == 2
    prompt = Course.resumed(task, previous).prompt
    assert prompt is not None
    assert prompt.startswith("Your previous attempt ended while the disk was full")


def test_attempts_that_got_work_done_use_no_retry_only_up_to_a_bound(tmp_path: Path) -> None:
    # An agent that changes some file every time while the limits go on never stopped; and a
    # resumed manager overwrote a recorded "got work done" with its own "replayed: no".
    task = Task(id="a", prompt="do a", retries=1)
    gate = Gates(4, backoff_base=0.01)
    throttle = AgentResult(outcome=AgentOutcome.RATE_LIMITED)
    course = Course.resumed(task, [])
    ends = [
        course.throttled(task, throttle, gate, provider="p", replayed=False, progressed=True)
        for _ in range(free_throttles(task) + 2)
    ]
    assert ends[: free_throttles(task) + 1] == [None] * (free_throttles(task) + 1)  # then a retry
    assert str(ends[-1]).startswith("rate limited and out of retries")
    with Store(tmp_path / "state.db") as store:
        add_run(store, task)
        attempt = store.record_attempt("r1", "a", number=1, identity=MANAGER, log_path="/l")
        store.end_attempt(attempt, exit_code=1, outcome="rate_limited")
        store.set_retry_at("r1", "a", 1, 1000.0, progressed=True)
        resumed = Course.resumed(task, store.attempts("r1", "a"))
        assert (resumed.retries_left, resumed.free_throttles_left) == (1, free_throttles(task) - 1)
        resumed.throttled(task, throttle, gate, provider="p", replayed=True, progressed=False)
        store.set_retry_at("r1", "a", 1, 1000.0, progressed=resumed.got_work_done)
        (again,) = store.attempts("r1", "a")
    assert again.progressed  # kept as recorded
