"""What `swarm merge` did: per-task results, the prediction, the target's commit; text and JSON."""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
    """One task's outcome; ``files`` are the conflicted files, ``commit`` the target after it."""

    task_id: str
    outcome: MergeOutcome
    reason: str = ""
    files: tuple[str, ...] = ()
    commit: str | None = None
    check: CheckResult | None = None

    def line(self) -> str:
        """One line for the terminal."""
        text = f"{self.outcome.value:<10}  {self.task_id}"
        if self.outcome is MergeOutcome.MERGED:
            text += f"  {self.commit[:12]}" if self.commit else ""
            if self.check is not None:
                text += "  checks passed"
            if self.reason:
                text += f"  ({self.reason})"
            return text
        return text + (f"  {self.reason.splitlines()[0]}" if self.reason else "")

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

    def by_outcome(self, outcome: MergeOutcome) -> list[TaskResult]:
        """The results with *outcome*."""
        return [r for r in self.results if r.outcome is outcome]

    @property
    def ok(self) -> bool:
        """Whether everything asked landed (a dry run: whether nothing is predicted to conflict)."""
        if self.dry_run:
            return self.prediction.clean
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
            **{o.value: [r.task_id for r in self.by_outcome(o)] for o in MergeOutcome},
        }


def format_prediction(report: MergeReport) -> list[str]:
    """The conflict matrix in words."""
    p = report.prediction
    head = f"prediction: {len(p.names)} branch(es) into {report.target_branch}"
    lines = [f"{head} ({report.target_before[:12]})"]
    if p.clean:
        lines.append("  no conflicts predicted")
    lines += [f"  conflict  {a} <-> {b}: {', '.join(f)}" for (a, b), f in p.pairs.items()]
    lines += [
        f"  conflict  {name} <-> {report.target_branch}: {', '.join(f)}"
        for name, f in p.target.items()
    ]
    if report.order:
        lines.append(f"order: {', '.join(report.order)}")
    return lines


def format_summary(report: MergeReport) -> list[str]:
    """Totals and where the target now points."""
    if report.dry_run:
        return ["dry run: nothing was merged"]
    counts = ", ".join(f"{len(report.by_outcome(o))} {o.value}" for o in MergeOutcome)
    moved = (
        f"{report.target_branch} now at {report.target_commit[:12]}"
        if report.target_commit != report.target_before
        else f"{report.target_branch} unchanged at {report.target_commit[:12]}"
    )
    where = f" (worktree {report.worktree})" if report.worktree else ""
    return [f"{counts}; {moved}{where}"]
