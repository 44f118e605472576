"""`swarm clean` and `swarm doctor` as text: findings grouped per kind, each with its fix."""

from __future__ import annotations

from worktree_swarm.cleanup.clean import Report
from worktree_swarm.cleanup.findings import Action, Kind
from worktree_swarm.core.text import path_text, printable, without_escapes

# Branches kept as before, named one by one up to this many.
_NAMED = 10


def clean_text(report: Report) -> str:
    """The cleanup report: findings grouped per kind, each with reason and fix."""
    results = {id(r.finding): r for r in report.results}
    lines: list[str] = list(report.notes)
    for kind in Kind:
        group = [f for f in report.findings if f.kind is kind]
        if not group:
            continue
        lines.append(f"{kind.value.replace('_', ' ')} ({len(group)})")
        for finding in group:
            lines.append(f"  {path_text(finding.target)}: {finding.reason}")
            result = results.get(id(finding))
            if finding.action is Action.KEEP:
                lines.append(f"    {finding.fix}")
            elif result is None:
                lines.append(f"    would: {finding.fix}")
            else:
                lines.append(f"    {'done' if result.fixed else 'left'}: {result.detail}")
    kept = sum(1 for f in report.findings if f.action is Action.KEEP)
    if report.kept_before:
        shown = report.kept_before[:_NAMED]
        more = len(report.kept_before) - len(shown)
        names = ", ".join(shown) + (f" and {more} more" if more else "")
        them = "them" if len(report.kept_before) > 1 else "it"
        lines.append(
            f"kept as before, not merged: {names} (merge {them}, or delete {them} with --force)"
        )
    if not report.findings:
        lines.append("nothing to clean" if not report.kept_before else "nothing else to clean")
    elif report.applied:
        fixed = sum(1 for r in report.results if r.fixed)
        lines.append(f"{fixed} fixed, {kept} kept, {len(report.left)} problems left")
    else:
        todo = len(report.findings) - kept
        if todo:
            lines.append(f"{todo} to fix, {kept} kept; run again with --yes to fix them")
        else:  # what is kept, --yes keeps too
            lines.append(f"nothing to fix, {kept} kept")
    # Reasons name what agents made (a submodule's path, a process's name, git's words about
    # them): no escape sequence of theirs reaches your terminal.
    return "\n".join(printable(without_escapes(line), keep="") for line in lines)
