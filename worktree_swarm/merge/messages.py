"""The messages of swarm's merge and squash commits, and the task a commit's subject names.

A subject is swarm's only when it is one of these whole, read from its end: a task's title
(in a squash's subject) that reads like another task's merge is never taken for that merge.
"""

from __future__ import annotations

import re

from worktree_swarm.core.task import TASK_ID_RE
from worktree_swarm.infra import redact

_ID = TASK_ID_RE.pattern
_RESOLVED = ", conflicts resolved by its agent"
_SUBJECTS = (
    re.compile(rf"swarm: merge task ({_ID}) \(\S+\)(?:{_RESOLVED})?"),
    re.compile(rf"swarm: .* \(task ({_ID}), squashed(?:, resolved)?\)"),
    re.compile(rf"swarm: squashed changes of task ({_ID}) since [0-9a-f]+"),
)


def merge_message(task_id: str, branch: str, *, resolved: bool = False) -> str:
    """The message of the merge commit of task *task_id*'s *branch*."""
    return f"swarm: merge task {task_id} ({branch}){_RESOLVED if resolved else ''}"


def squash_message(title: str, task_id: str, *, resolved: bool = False) -> str:
    """The message of task *task_id*'s squash commit: its *title*, on one line.

    One line: git's subject is the first paragraph, which a title could end early.
    """
    line = " ".join(redact.redact(title).split()) or task_id
    return f"swarm: {line} (task {task_id}, squashed{', resolved' if resolved else ''})"


def changes_message(task_id: str, base: str) -> str:
    """The message git is left with for a squash of task *task_id*'s changes since *base*."""
    return f"swarm: squashed changes of task {task_id} since {base[:12]}"


def merged_task(subject: str) -> str | None:
    """The task whose merge (or squash) commit has this *subject*; None for any other."""
    for pattern in _SUBJECTS:
        found = pattern.fullmatch(subject)
        if found:
            return found[1]
    return None
