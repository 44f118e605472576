"""What `swarm merge` did: per-task results, the prediction, the target's commit; JSON."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from worktree_swarm.merge.conflicts import Prediction


class MergeOutcome(enum.StrEnum):
    """What happened to one task in a merge."""

    MERGED = "merged"
    CONFLICTED = "conflicted"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The checks run after a merge (or on the target before any): passed or the failure."""

    commands: tuple[str, ...]
    ok: bool
    summary: str = ""

    def to_json(self) -> dict[str, object]:
        """Plain dict for JSON output."""
        return {"commands": list(self.commands), "ok": self.ok, "summary": self.summary}


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskResult:
    """One task's outcome; ``files`` are the conflicted files, ``commit`` the target after it.

    ``also``: what the agent resolving its conflicts changed besides them (in ``reason`` too);
    ``settled``: a predicted conflict that merged clean, to review (in ``reason`` too).
    """

    task_id: str
    outcome: MergeOutcome
    reason: str = ""
    files: tuple[str, ...] = ()
    commit: str | None = None
    check: CheckResult | None = None
    also: tuple[str, ...] = ()
    settled: str = ""

    def to_json(self) -> dict[str, object]:
        """Plain dict for JSON output."""
        return {
            "task_id": self.task_id,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "files": list(self.files),
            "commit": self.commit,
            "checks": None if self.check is None else self.check.to_json(),
        }


# Files whose change alters what git or swarm do once landed, not only the code: worth a look
# of their own before landing (by name, anywhere in the tree where git reads them there).
REVIEW_FILES = {
    ".gitattributes": "which filters, diff and merge drivers git runs, how it converts files",
    ".gitmodules": "what git clones and fetches as submodules",
    "swarm.toml": "later runs' settings, agent commands and checks",
    "pyproject.toml": "its [tool.swarm]: later runs' settings, agent commands and checks",
}


def _to_review(path: str) -> bool:
    """One of :data:`REVIEW_FILES` where git or swarm reads it (pyproject.toml: see ``tool``)."""
    name = path.rsplit("/", 1)[-1]
    return (
        name in REVIEW_FILES
        and name != "pyproject.toml"
        and (name != "swarm.toml" or "/" not in path)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeReport:
    """Everything `swarm merge` reports (the ``--json`` fields are documented in docs/merge.md)."""

    run_id: str
    target_branch: str
    target_before: str
    target_commit: str
    worktree: str | None
    dry_run: bool
    strategy: str
    prediction: Prediction
    order: tuple[str, ...]
    results: tuple[TaskResult, ...]
    baseline: CheckResult | None = None
    notes: tuple[str, ...] = ()  # every other line the merge told (outside writes allowed, ...)
    tool: frozenset[str] = frozenset()  # the tasks that changed pyproject.toml's [tool.swarm]

    def by_outcome(self, outcome: MergeOutcome) -> list[TaskResult]:
        """The results with *outcome*."""
        return [r for r in self.results if r.outcome is outcome]

    def to_review(self) -> dict[str, list[str]]:
        """The files each task merged changed that change what git or swarm do later.

        :data:`REVIEW_FILES`, to read before landing it; a dry run: of the tasks it would merge.
        """
        # A dry run's order is the tasks it would merge (the skipped are not in it).
        landed = (
            list(self.order)
            if self.dry_run
            else [r.task_id for r in self.by_outcome(MergeOutcome.MERGED)]
        )
        found = {}
        for name in landed:
            changes = self.prediction.changes.get(name)
            paths = sorted(p for p in changes.paths if _to_review(p)) if changes else []
            paths += ["pyproject.toml"] if name in self.tool else []
            if paths:
                found[name] = paths
        return found

    @property
    def ok(self) -> bool:
        """Whether everything asked landed (a dry run: nothing predicted to conflict or skip)."""
        if self.dry_run:  # as the merge would end: a skip is no success there either
            skipped = any(r.outcome is MergeOutcome.SKIPPED for r in self.results)
            return self.prediction.clean and not skipped
        baseline_ok = self.baseline is None or self.baseline.ok
        return baseline_ok and all(r.outcome is MergeOutcome.MERGED for r in self.results)

    def to_json(self) -> dict[str, object]:
        """Plain dict for JSON output."""
        p = self.prediction
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "strategy": self.strategy,
            "target": {
                "branch": self.target_branch,
                "commit_before": self.target_before,
                "commit": self.target_commit,
                "worktree": self.worktree,
            },
            "prediction": {
                "branches": list(p.names),
                "pairs": [
                    {"a": a, "b": b, "files": list(files)} for (a, b), files in p.pairs.items()
                ],
                "against_target": [
                    {"task_id": name, "files": list(files)} for name, files in p.target.items()
                ],
                "merge_tree_calls": p.merge_trees,
            },
            "order": list(self.order),
            "baseline_checks": None if self.baseline is None else self.baseline.to_json(),
            "results": [r.to_json() for r in self.results],
            "notes": list(self.notes),
            "review": self.to_review(),
            **{o.value: [r.task_id for r in self.by_outcome(o)] for o in MergeOutcome},
        }


class MergeProgress(Protocol):
    """Who is told as a merge goes (the CLI shows it; ``--json`` and library callers need not)."""

    def predicted(self, report: MergeReport) -> None:
        """The prediction and order are known; nothing has been merged yet."""

    def finished(self, result: TaskResult) -> None:
        """One task's merge ended (or was skipped)."""

    def resolving(self, task_id: str, files: tuple[str, ...]) -> None:
        """The task's agent was started to resolve conflicts in *files*."""

    def note(self, text: str) -> None:
        """Anything else worth a line (checks failing on the target before any merge)."""


class Noting:
    """A :class:`MergeProgress` that keeps each note (for the report) and passes all on."""

    def __init__(self, inner: MergeProgress) -> None:
        self.inner = inner
        self.notes: list[str] = []

    def predicted(self, report: MergeReport) -> None:
        """Pass it on."""
        self.inner.predicted(report)

    def finished(self, result: TaskResult) -> None:
        """Pass it on."""
        self.inner.finished(result)

    def resolving(self, task_id: str, files: tuple[str, ...]) -> None:
        """Pass it on."""
        self.inner.resolving(task_id, files)

    def note(self, text: str) -> None:
        """Keep it, and pass it on."""
        self.notes.append(text)
        self.inner.note(text)


class Silent:
    """A :class:`MergeProgress` that tells no one."""

    def predicted(self, report: MergeReport) -> None:
        """Ignore it."""

    def finished(self, result: TaskResult) -> None:
        """Ignore it."""

    def resolving(self, task_id: str, files: tuple[str, ...]) -> None:
        """Ignore it."""

    def note(self, text: str) -> None:
        """Ignore it."""
