"""`swarm merge` as text: the prediction, one line per task as it lands, then the totals."""

from __future__ import annotations

from worktree_swarm.core.text import Echo, path_text, paths_text
from worktree_swarm.core.words import plural
from worktree_swarm.merge.merge_report import (
    REVIEW_FILES,
    MergeOutcome,
    MergeReport,
    TaskResult,
)

# Outcome words are padded to one width so task ids line up as results stream in.
_OUTCOME_WIDTH = 10


def merge_result_line(result: TaskResult) -> str:
    """One line per task as the merge goes: outcome, task, commit or why."""
    text = f"{result.outcome.value:<{_OUTCOME_WIDTH}}  {result.task_id}"
    if result.outcome is MergeOutcome.MERGED:
        text += f"  {result.commit[:12]}" if result.commit else ""
        if result.check is not None:
            text += "  checks passed"
        if result.reason:
            text += f"  ({result.reason})"
        return text
    return text + (f"  {_first_line(result.reason)}" if result.reason else "")


def merge_note_line(task_id: str, text: str) -> str:
    """A step of a task's merge (its agent resolving conflicts), aligned with the results."""
    return f"{'resolving':<{_OUTCOME_WIDTH}}  {task_id}  {text}"


# Conflicting pairs a prediction names one by one; the rest are counted.
_PAIRS_SHOWN = 20


def merge_prediction_lines(report: MergeReport) -> list[str]:
    """The conflict matrix in words, and the order the branches will land in."""
    p = report.prediction
    head = f"prediction: {plural(len(p.names), 'branch', 'branches')} into {report.target_branch}"
    lines = [f"{head} ({report.target_before[:12]})"]
    if p.clean:
        lines.append("  no conflicts predicted")
    pairs = [f"  conflict  {a} <-> {b}: {paths_text(f)}" for (a, b), f in p.pairs.items()]
    lines += pairs[:_PAIRS_SHOWN]
    if len(pairs) > _PAIRS_SHOWN:  # 50 branches editing one file make 1,225 pairs
        more = len(pairs) - _PAIRS_SHOWN
        lines.append(f"  ... and {plural(more, 'conflicting pair')} more (`--json` lists each)")
    lines += [
        f"  conflict  {name} <-> {report.target_branch}: {paths_text(f)}"
        for name, f in p.target.items()
    ]
    if report.order:
        lines.append(f"order: {', '.join(report.order)}")
    return lines


def merge_summary(report: MergeReport) -> list[str]:
    """Totals and where the target now points."""
    if report.dry_run:
        return ["dry run: nothing was merged", *review_lines(report)]
    counts = ", ".join(f"{len(report.by_outcome(o))} {o.value}" for o in MergeOutcome)
    if report.target_commit != report.target_before:
        moved = f"{report.target_branch} now at {report.target_commit[:12]}"
    elif report.worktree or report.by_outcome(MergeOutcome.MERGED):
        moved = f"{report.target_branch} unchanged at {report.target_commit[:12]}"
    else:  # no branch made for nothing: it may not be there; an order is what checks held up
        moved = "nothing merged" if report.results or report.order else "nothing to merge"
    where = f" (worktree {report.worktree})" if report.worktree else ""
    return [f"{counts}; {moved}{where}", *review_lines(report)]


def review_lines(report: MergeReport) -> list[str]:
    """The files merged tasks changed that change what git or swarm do, said before landing."""
    found = report.to_review()
    if not found:
        return []
    lines = ["review before landing (they change what git or swarm do, not only code):"]
    for task_id, paths in found.items():  # no `id:`: an id like `api-token` read as a setting
        lines += [
            f"  {task_id}  {path_text(p)} ({REVIEW_FILES[p.rsplit('/', 1)[-1]]})" for p in paths
        ]
    return lines


class MergeEcho:
    """Shows a merge as it goes, one line at a time (a :class:`MergeProgress`)."""

    def __init__(self, echo: Echo) -> None:
        self._echo = echo

    def predicted(self, report: MergeReport) -> None:
        """The prediction and the order."""
        for line in merge_prediction_lines(report):
            self._echo(line)

    def finished(self, result: TaskResult) -> None:
        """One task's result."""
        self._echo(merge_result_line(result))

    def resolving(self, task_id: str, files: tuple[str, ...]) -> None:
        """A task's agent resolving conflicts."""
        self._echo(
            merge_note_line(task_id, f"conflicts in {paths_text(files)}: starting its agent")
        )

    def note(self, text: str) -> None:
        """Anything else."""
        self._echo(text)


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""
