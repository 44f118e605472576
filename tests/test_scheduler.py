from __future__ import annotations

import fnmatch
import functools
import itertools
import random

import pytest

from worktree_swarm.core.models import TaskState
from worktree_swarm.core.scheduler import Scheduler, patterns_overlap
from worktree_swarm.core.task import Task

P = TaskState.PENDING
D = TaskState.DONE


def task(task_id: str, *deps: str, files: tuple[str, ...] = (), priority: int = 0) -> Task:
    return Task(id=task_id, prompt="p", depends_on=deps, files=files, priority=priority)


def all_pending(tasks: list[Task]) -> dict[str, TaskState]:
    return {t.id: P for t in tasks}


# --- chain_length -------------------------------------------------------------------------


def test_chain_length_counts_longest_dependent_chain() -> None:
    tasks = [task("a"), task("b", "a"), task("c", "b"), task("d", "a"), task("e")]
    s = Scheduler(tasks)
    assert [s.chain_length(t.id) for t in tasks] == [3, 2, 1, 1, 1]


def test_chain_length_diamond() -> None:
    tasks = [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"), task("e", "d")]
    s = Scheduler(tasks)
    assert s.chain_length("a") == 4
    assert s.chain_length("b") == 3
    assert s.chain_length("e") == 1


def test_dependencies_may_follow_dependents_in_the_manifest() -> None:
    tasks = [task("late", "early"), task("early")]
    s = Scheduler(tasks)
    assert s.chain_length("early") == 2
    assert s.levels() == [["early"], ["late"]]


# --- pick ----------------------------------------------------------------------------------


def test_pick_orders_by_chain_then_priority_then_manifest() -> None:
    tasks = [
        task("low"),
        task("high", priority=5),
        task("root"),
        task("child", "root"),
        task("also-low"),
    ]
    s = Scheduler(tasks)
    picked = s.pick(states=all_pending(tasks), running=(), slots=10)
    assert picked == ["root", "high", "low", "also-low"]


def test_pick_negative_priority_goes_last() -> None:
    tasks = [task("neg", priority=-1), task("zero")]
    s = Scheduler(tasks)
    assert s.pick(states=all_pending(tasks), running=(), slots=2) == ["zero", "neg"]


@pytest.mark.parametrize(("slots", "expected"), [(0, []), (-3, []), (1, ["a"]), (2, ["a", "b"])])
def test_pick_respects_slots(slots: int, expected: list[str]) -> None:
    tasks = [task("a"), task("b"), task("c")]
    s = Scheduler(tasks)
    assert s.pick(states=all_pending(tasks), running=(), slots=slots) == expected


def test_pick_waits_for_dependencies_to_succeed() -> None:
    tasks = [task("a"), task("b"), task("c", "a", "b")]
    s = Scheduler(tasks)
    states = {"a": D, "b": TaskState.RUNNING, "c": P}
    assert s.pick(states=states, running=["b"], slots=4) == []
    states["b"] = D
    assert s.pick(states=states, running=[], slots=4) == ["c"]


@pytest.mark.parametrize(
    "state",
    [s for s in TaskState if s is not TaskState.PENDING],
)
def test_pick_only_starts_pending_tasks(state: TaskState) -> None:
    s = Scheduler([task("a")])
    assert s.pick(states={"a": state}, running=[], slots=1) == []


def test_pick_never_returns_a_running_task() -> None:
    s = Scheduler([task("a"), task("b")])
    assert s.pick(states={"a": P, "b": P}, running=["a"], slots=2) == ["b"]


def test_pick_skips_tasks_overlapping_running_ones() -> None:
    tasks = [
        task("auth", files=("src/auth/**",)),
        task("login", files=("src/auth/login.py",)),
        task("docs", files=("docs/**",)),
        task("free"),
    ]
    s = Scheduler(tasks)
    states = {"auth": TaskState.RUNNING, "login": P, "docs": P, "free": P}
    assert s.pick(states=states, running=["auth"], slots=5) == ["docs", "free"]


def test_pick_skips_tasks_overlapping_ones_picked_earlier() -> None:
    tasks = [
        task("first", files=("src/**",), priority=2),
        task("second", files=("src/x.py",), priority=1),
        task("third", files=("tests/**",)),
    ]
    s = Scheduler(tasks)
    assert s.pick(states=all_pending(tasks), running=[], slots=3) == ["first", "third"]


def test_skipped_task_does_not_consume_a_slot() -> None:
    tasks = [task("a", files=("x",)), task("b", files=("x",)), task("c", files=("y",))]
    s = Scheduler(tasks)
    assert s.pick(states=all_pending(tasks), running=[], slots=2) == ["a", "c"]


def test_tasks_without_files_never_conflict() -> None:
    tasks = [task("a"), task("b"), task("c", files=("**",))]
    s = Scheduler(tasks)
    assert s.pick(states=all_pending(tasks), running=[], slots=3) == ["a", "b", "c"]


def test_pick_ignores_unknown_running_ids() -> None:
    s = Scheduler([task("a", files=("x",))])
    assert s.pick(states={"a": P}, running=["ghost"], slots=1) == ["a"]


# --- newly_blocked -------------------------------------------------------------------------

FINAL_FAILURES = [
    TaskState.FAILED,
    TaskState.TIMED_OUT,
    TaskState.STOPPED,
    TaskState.NO_CHANGES,
    TaskState.BLOCKED,
]


@pytest.mark.parametrize("state", FINAL_FAILURES)
def test_failed_dependency_blocks(state: TaskState) -> None:
    s = Scheduler([task("fix-login"), task("tests", "fix-login")])
    blocked = s.newly_blocked({"fix-login": state, "tests": P})
    assert blocked == {"tests": f"dependency fix-login is {state.value}"}


@pytest.mark.parametrize(
    "state",
    [
        TaskState.PENDING,
        TaskState.RUNNING,
        TaskState.RATE_LIMITED,
        TaskState.CHECKING,
        TaskState.DONE,
    ],
)
def test_live_or_successful_dependency_does_not_block(state: TaskState) -> None:
    s = Scheduler([task("a"), task("b", "a")])
    assert s.newly_blocked({"a": state, "b": P}) == {}


def test_blocking_is_transitive() -> None:
    tasks = [task("a"), task("b", "a"), task("c", "b"), task("d", "c"), task("other")]
    s = Scheduler(tasks)
    states = {**all_pending(tasks), "a": TaskState.FAILED}
    assert s.newly_blocked(states) == {
        "b": "dependency a is failed",
        "c": "dependency b is blocked",
        "d": "dependency c is blocked",
    }


def test_transitive_blocking_independent_of_manifest_order() -> None:
    tasks = [task("d", "c"), task("c", "b"), task("b", "a"), task("a")]
    s = Scheduler(tasks)
    states = {**all_pending(tasks), "a": TaskState.TIMED_OUT}
    assert set(s.newly_blocked(states)) == {"b", "c", "d"}


def test_only_pending_tasks_are_reported() -> None:
    s = Scheduler([task("a"), task("b", "a"), task("c", "b")])
    states = {"a": TaskState.FAILED, "b": TaskState.BLOCKED, "c": TaskState.STOPPED}
    assert s.newly_blocked(states) == {}


def test_already_blocked_dependency_blocks_pending_dependent() -> None:
    s = Scheduler([task("a"), task("b", "a"), task("c", "b")])
    states = {"a": TaskState.FAILED, "b": TaskState.BLOCKED, "c": P}
    assert s.newly_blocked(states) == {"c": "dependency b is blocked"}


def test_blocked_by_any_of_several_dependencies() -> None:
    s = Scheduler([task("a"), task("b"), task("c", "a", "b")])
    blocked = s.newly_blocked({"a": D, "b": TaskState.NO_CHANGES, "c": P})
    assert blocked == {"c": "dependency b is no_changes"}


# --- levels and makespan -------------------------------------------------------------------


def test_levels() -> None:
    tasks = [task("a"), task("b"), task("c", "a"), task("d", "c", "b"), task("e", "a")]
    assert Scheduler(tasks).levels() == [["a", "b"], ["c", "e"], ["d"]]


def test_levels_empty() -> None:
    assert Scheduler([]).levels() == []


def test_ideal_makespan_critical_path_dominates() -> None:
    tasks = [task("a"), task("b", "a"), task("c")]
    s = Scheduler(tasks)
    assert s.ideal_makespan({"a": 10.0, "b": 5.0, "c": 1.0}, jobs=4) == 15.0


def test_ideal_makespan_capacity_dominates() -> None:
    tasks = [task(f"t{i}") for i in range(6)]
    s = Scheduler(tasks)
    assert s.ideal_makespan(dict.fromkeys((t.id for t in tasks), 10.0), jobs=2) == 30.0
    assert s.ideal_makespan(dict.fromkeys((t.id for t in tasks), 10.0), jobs=1) == 60.0


def test_ideal_makespan_takes_longest_branch_of_a_diamond() -> None:
    tasks = [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")]
    s = Scheduler(tasks)
    assert s.ideal_makespan({"a": 1.0, "b": 7.0, "c": 2.0, "d": 1.0}, jobs=10) == 9.0


def test_ideal_makespan_missing_durations_and_no_tasks() -> None:
    s = Scheduler([task("a"), task("b", "a")])
    assert s.ideal_makespan({"b": 3.0}, jobs=2) == 3.0
    assert Scheduler([]).ideal_makespan({}, jobs=4) == 0.0


# --- patterns_overlap ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("src/auth/**", "src/auth/login.py", True),
        ("src/a/**", "src/b/**", False),
        ("*.md", "docs/x.md", False),
        ("**/*.py", "src/x.py", True),
        ("**/*.py", "src/deep/er/x.py", True),
        ("**/*.py", "src/x.md", False),
        ("src/*.py", "src/x.py", True),
        ("src/*.py", "src/*.md", False),
        ("src/x.py", "src/x.py", True),
        ("src/x.py", "src/y.py", False),
        ("src/a*", "src/*b", True),
        ("src/a*", "src/b*", False),
        ("src/?.py", "src/ab.py", False),
        ("src/[ab].py", "src/b.py", True),
        ("src/[ab].py", "src/c.py", False),
        ("src/[!ab].py", "src/a.py", False),
        ("**", "anything/at/all", True),
        ("a/**/z", "a/b/c/z", True),
        ("a/**/z", "a/z", True),
        ("a/**/z", "b/**/z", False),
        ("**/x/**", "**/y", True),
        ("./src/x.py", "src/x.py", True),
        ("src/", "src/x.py", True),
        ("src/auth", "src/auth/login.py", True),
        ("src/auth", "src/authz", False),
        ("README.md", "**/*.py", False),
        ("src/x.py", "src/x.py/**", True),
        ("*", "src/x.py", False),
        ("src/*/", "src/a/x.py", True),
    ],
)
def test_patterns_overlap(a: str, b: str, *, expected: bool) -> None:
    assert patterns_overlap(a, b) is expected
    assert patterns_overlap(b, a) is expected


@functools.cache
def _glob_match(pattern: str, path: str) -> bool:
    """Reference: segment-wise fnmatch where `**` matches zero or more whole segments."""
    pat = pattern.split("/")
    segs = path.split("/")

    def go(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(segs)
        if pat[i] == "**":
            return any(go(i + 1, k) for k in range(j, len(segs) + 1))
        return j < len(segs) and fnmatch.fnmatchcase(segs[j], pat[i]) and go(i + 1, j + 1)

    return go(0, 0)


SEGMENT_PATTERNS = ["a", "b", "ab", "*", "?", "a*", "*b", "?b", "[ab]", "[!a]", "a?b", "*a*", "**"]
NAMES = ["a", "b", "ab", "ba", "aab", "x", "abb"]


def test_property_no_false_negatives() -> None:
    rng = random.Random(20240601)
    paths = [
        "/".join(combo) for depth in (1, 2, 3) for combo in itertools.product(NAMES, repeat=depth)
    ]
    for _ in range(1500):
        a = "/".join(rng.choices(SEGMENT_PATTERNS, k=rng.randint(1, 3)))
        b = "/".join(rng.choices(SEGMENT_PATTERNS, k=rng.randint(1, 3)))
        witness = next((p for p in paths if _glob_match(a, p) and _glob_match(b, p)), None)
        if witness is not None:
            assert patterns_overlap(a, b), (a, b, witness)


def test_property_literal_path_agrees_with_matching() -> None:
    # Against a concrete path of the same depth, the answer is exact (no false positives).
    rng = random.Random(7)
    for _ in range(1500):
        depth = rng.randint(1, 3)
        pattern = "/".join(rng.choices([s for s in SEGMENT_PATTERNS if s != "**"], k=depth))
        path = "/".join(rng.choices(NAMES, k=depth))
        assert patterns_overlap(pattern, path) is _glob_match(pattern, path), (pattern, path)
