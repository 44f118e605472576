"""Pure readiness logic: dependencies, capacity, file exclusivity and priority. No I/O."""

from __future__ import annotations

import fnmatch
import functools
from typing import TYPE_CHECKING

from worktree_swarm.core.models import TaskState

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

    from worktree_swarm.core.task import Task

_WILDCARDS = frozenset("*?[")


class Scheduler:
    """Decide which tasks of a validated batch may start, and which can never start."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        """Index *tasks*; they must already be validated (ids unique, deps exist, no cycles)."""
        self._tasks = {task.id: task for task in tasks}
        self._position = {task.id: index for index, task in enumerate(tasks)}
        self._dependents: dict[str, list[str]] = {task.id: [] for task in tasks}
        for task in tasks:
            for dep in task.depends_on:
                self._dependents[dep].append(task.id)
        self._order = _topological_order(tasks)
        self._chain: dict[str, int] = {}
        for task_id in reversed(self._order):
            below = (self._chain[d] for d in self._dependents[task_id])
            self._chain[task_id] = 1 + max(below, default=0)

    def chain_length(self, task_id: str) -> int:
        """Return the task count of the longest chain of dependents from *task_id* (leaf = 1)."""
        return self._chain[task_id]

    def rank(self, task_id: str) -> tuple[int, int, int]:
        """Where *task_id* goes among ready tasks (lower first): see :meth:`pick`."""
        task = self._tasks[task_id]
        return (-self._chain[task_id], -task.priority, self._position[task_id])

    def pick(
        self,
        *,
        states: Mapping[str, TaskState],
        running: Collection[str],
        slots: int,
        waits: Callable[[Task], bool] = lambda _task: False,
    ) -> list[str]:
        """Return the tasks to start now, best first, at most *slots* of them.

        A task is ready when it is pending and every dependency succeeded. Ready tasks go by
        longest chain of dependents, then priority, then manifest order; a task whose ``files``
        may overlap those of a running or already picked task waits, as does one *waits* says
        would only wait once started (its provider's rate limit).
        """
        if slots <= 0:
            return []
        ready = [
            task
            for task_id, task in self._tasks.items()
            if states.get(task_id) is TaskState.PENDING
            and task_id not in running
            and all(_satisfied(states.get(dep)) for dep in task.depends_on)
            and not waits(task)
        ]
        ready.sort(key=lambda t: self.rank(t.id))
        held = [self._tasks[r].files for r in running if r in self._tasks]
        picked: list[str] = []
        for task in ready:
            if len(picked) == slots:
                break
            if any(_files_overlap(task.files, other) for other in held):
                continue
            picked.append(task.id)
            held.append(task.files)
        return picked

    def newly_blocked(self, states: Mapping[str, TaskState]) -> dict[str, str]:
        """Return pending tasks that can never start, mapped to the reason.

        A dependency in a final state other than success blocks its dependents, and a task
        blocked here blocks its own dependents in turn.
        """
        effective = dict(states)
        blocked: dict[str, str] = {}
        for task_id in self._order:
            if effective.get(task_id) is not TaskState.PENDING:
                continue
            for dep in self._tasks[task_id].depends_on:
                dep_state = effective.get(dep)
                if dep_state is not None and dep_state.is_final and not dep_state.is_success:
                    blocked[task_id] = f"dependency {dep} is {dep_state.value}"
                    effective[task_id] = TaskState.BLOCKED
                    break
        return blocked

    def levels(self) -> list[list[str]]:
        """Return the tasks in topological levels: level 0 has no dependencies."""
        level: dict[str, int] = {}
        for task_id in self._order:
            deps = self._tasks[task_id].depends_on
            level[task_id] = 1 + max((level[d] for d in deps), default=-1)
        result: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
        for task_id in sorted(level, key=self._position.__getitem__):
            result[level[task_id]].append(task_id)
        return result

    def ideal_makespan(self, durations: Mapping[str, float], jobs: int) -> float:
        """Return the lower bound on wall time: max(critical path, total work / *jobs*).

        Tasks missing from *durations* count as taking no time.
        """
        finish: dict[str, float] = {}
        for task_id in self._order:
            start = max((finish[d] for d in self._tasks[task_id].depends_on), default=0.0)
            finish[task_id] = start + durations.get(task_id, 0.0)
        critical = max(finish.values(), default=0.0)
        total = sum(durations.get(task_id, 0.0) for task_id in self._tasks)
        return max(critical, total / max(jobs, 1))


def _topological_order(tasks: Sequence[Task]) -> list[str]:
    """Return task ids with every dependency before its dependents (Kahn's algorithm)."""
    waiting = {task.id: len(set(task.depends_on)) for task in tasks}
    dependents: dict[str, list[str]] = {task.id: [] for task in tasks}
    for task in tasks:
        for dep in set(task.depends_on):
            dependents[dep].append(task.id)
    order = [task.id for task in tasks if waiting[task.id] == 0]
    for task_id in order:  # grows while iterating
        for child in dependents[task_id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                order.append(child)
    return order


def _satisfied(state: TaskState | None) -> bool:
    return state is not None and state.is_success


def _files_overlap(a: Sequence[str], b: Sequence[str]) -> bool:
    return any(patterns_overlap(x, y) for x in a for y in b)


def patterns_overlap(a: str, b: str) -> bool:
    """Return whether some path could match both globs; false positives are allowed, misses not.

    Globs compare segment by segment; ``**`` spans any number of segments. A glob that names
    a directory (a trailing ``/``, or a last segment with no wildcard and no ``.``) also
    covers everything beneath it: ``src/auth`` and ``src/auth/`` cover ``src/auth/login.py``.
    """
    return _overlap(pattern_segments(a), pattern_segments(b))


def pattern_segments(pattern: str) -> tuple[str, ...]:
    """The segments of a ``files`` glob, with ``**`` added after a name read as a directory."""
    pattern = pattern.strip()
    parts = [p for p in pattern.split("/") if p not in {"", "."}]
    if not parts:
        return ("**",)
    last = parts[-1]
    # Users list directories as plain names ("src/auth"); reading "README.md" or "*.py" the
    # same way would make every file pattern collide with "**/*.py".
    names_directory = pattern.endswith("/") or ("." not in last and _WILDCARDS.isdisjoint(last))
    if names_directory and last != "**":
        parts.append("**")
    return tuple(parts)


@functools.lru_cache(maxsize=4096)
def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    # Walk both segment lists at once; a `**` either ends or swallows the other side's segment.
    @functools.cache
    def step(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "**" and (step(i + 1, j) or (j < len(b) and step(i, j + 1))):
            return True
        if j < len(b) and b[j] == "**" and (step(i, j + 1) or (i < len(a) and step(i + 1, j))):
            return True
        if i == len(a) or j == len(b) or "**" in {a[i], b[j]}:
            return False
        return _segment_overlap(a[i], b[j]) and step(i + 1, j + 1)

    return step(0, 0)


def _segment_overlap(x: str, y: str) -> bool:
    x_wild = not _WILDCARDS.isdisjoint(x)
    y_wild = not _WILDCARDS.isdisjoint(y)
    if not x_wild and not y_wild:
        return x == y
    if not y_wild:
        return fnmatch.fnmatchcase(y, x)
    if not x_wild:
        return fnmatch.fnmatchcase(x, y)
    # Two wildcard segments: every match starts with the literal text before the first
    # wildcard and ends with the text after the last, so those must be compatible.
    x_head, x_tail = _literal_ends(x)
    y_head, y_tail = _literal_ends(y)
    return (x_head.startswith(y_head) or y_head.startswith(x_head)) and (
        x_tail.endswith(y_tail) or y_tail.endswith(x_tail)
    )


def _literal_ends(segment: str) -> tuple[str, str]:
    """Return the literal text before the first and after the last wildcard token."""
    tokens: list[str | None] = []  # a literal character, or None for a wildcard token
    i, n = 0, len(segment)
    while i < n:
        c = segment[i]
        i += 1
        if c in "*?":
            tokens.append(None)
        elif c == "[":
            # Same class syntax as fnmatch: `!` negates, a leading `]` is a member.
            j = i + 1 if i < n and segment[i] == "!" else i
            j = j + 1 if j < n and segment[j] == "]" else j
            j = segment.find("]", j)
            if j == -1:
                tokens.append("[")  # unclosed: fnmatch takes it literally
            else:
                tokens.append(None)
                i = j + 1
        else:
            tokens.append(c)
    wild = [k for k, token in enumerate(tokens) if token is None]
    literal = [token or "" for token in tokens]
    if not wild:
        whole = "".join(literal)
        return whole, whole
    return "".join(literal[: wild[0]]), "".join(literal[wild[-1] + 1 :])


def dependency_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one dependency cycle as ``[a, b, c, a]`` (a depends on b ...), or None.

    Dependencies that are not keys of *deps* are ignored. Iterative, so long chains are fine.
    """
    done: set[str] = set()
    for root in deps:
        if root in done:
            continue
        path = [root]
        position = {root: 0}
        stack = [iter(deps[root])]
        while stack:
            for dep in stack[-1]:
                if dep not in deps or dep in done:
                    continue
                if dep in position:
                    return [*path[position[dep] :], dep]
                position[dep] = len(path)
                path.append(dep)
                stack.append(iter(deps[dep]))
                break
            else:
                stack.pop()
                node = path.pop()
                del position[node]
                done.add(node)
    return None
