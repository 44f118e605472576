"""The bundled scripted agent: follows simple directives in its prompt, needs no API key.

Used by ``swarm demo`` and by tests. It reads the prompt file given as its only argument and
obeys one directive per line (any line that starts with another word is ignored, so prose
around them is fine)::

    write PATH: TEXT     create/replace PATH (inside the worktree) with TEXT and a newline
    append PATH: TEXT    append TEXT and a newline to PATH
    sleep SECONDS        pause
    say TEXT             print TEXT
    exit CODE            stop now with CODE (0-255)

A line that starts with one of these words but does not fit it is refused before anything is
done (``swarm run`` refuses such a prompt as bad input). A prompt with no ``write`` or
``append`` line writes ``<task id>.txt`` holding the prompt. The prompt is data: nothing in it
is ever run.
"""

from __future__ import annotations

import math
import os
import posixpath
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.text import one_line
from worktree_swarm.core.words import FINDINGS_HEADING

VERBS = frozenset({"write", "append", "sleep", "say", "exit"})
_FORMS = {
    "write": "write PATH: TEXT",
    "append": "append PATH: TEXT",
    "sleep": "sleep SECONDS",
    "exit": "exit CODE",
}
BAD_DIRECTIVE = 2  # the exit code of a prompt it refuses


class DirectiveError(ValueError):
    """A line of the prompt starts with a directive's word but does not fit it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Directive:
    """One line to obey: the verb and its argument (a path, seconds, a code or text)."""

    verb: str
    arg: str
    text: str = ""


def own_prompt(text: str) -> str:
    """*text* without the shared-findings paragraph swarm appends (and what follows it)."""
    head, _, _ = text.partition(f"\n\n{FINDINGS_HEADING}\n")
    return head


def directives(prompt: str) -> list[Directive]:
    """The directives of *prompt*, in order; DirectiveError names the first line that is wrong."""
    found = []
    for number, line in enumerate(prompt.splitlines(), start=1):
        verb, _, rest = line.strip().partition(" ")
        if verb not in VERBS:
            continue
        try:
            found.append(_directive(verb, rest.strip()))
        except DirectiveError as exc:
            shown = one_line(line, limit=60, controls=True)
            msg = f"line {number} ({shown!r}): {exc}; expected `{_FORMS[verb]}`"
            raise DirectiveError(msg) from None
    return found


def _directive(verb: str, rest: str) -> Directive:
    if verb == "say":
        return Directive(verb=verb, arg=rest)
    if verb == "sleep":
        try:
            seconds = float(rest)
        except ValueError:
            raise DirectiveError(f"{rest!r} is not a number of seconds") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise DirectiveError(f"{rest!r} is not a number of seconds")
        return Directive(verb=verb, arg=rest)
    if verb == "exit":
        if not rest.isascii() or not rest.isdigit() or int(rest) > 255:  # noqa: PLR2004
            raise DirectiveError(f"{rest!r} is not an exit code from 0 to 255")
        return Directive(verb=verb, arg=str(int(rest)))
    path, colon, text = rest.partition(":")
    if not colon:
        raise DirectiveError("no ':' after the path")
    return Directive(verb=verb, arg=_relative_path(path.strip()), text=text.strip())


def _relative_path(path: str) -> str:
    """*path* checked to name a file inside the worktree, not git's own."""
    if not path:
        raise DirectiveError("no path")
    if path.startswith("/"):
        raise DirectiveError(f"{path} is absolute, not in the worktree")
    if path.endswith("/"):
        raise DirectiveError(f"{path} names a directory, not a file")
    normal = posixpath.normpath(path)
    if normal == "." or normal.startswith("../") or normal == "..":
        raise DirectiveError(f"{path} is outside the worktree")
    if any(part.casefold() == ".git" for part in normal.split("/")):
        raise DirectiveError(f"{path} is git's own, not a file of the worktree")
    return normal


def _target(root: Path, rel: str) -> Path:
    """The file *rel* names, once no symlink on its way leads out of *root* or into git's."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        msg = f"refusing to write outside the worktree: {rel}"
        raise DirectiveError(msg)
    if any(part.casefold() == ".git" for part in path.relative_to(root).parts):
        msg = f"refusing to write git's own file: {rel}"
        raise DirectiveError(msg)
    return path


def _obey(root: Path, prompt: str, steps: list[Directive]) -> int:
    wrote = False
    for step in steps:
        if step.verb in {"write", "append"}:
            path = _target(root, step.arg)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a" if step.verb == "append" else "w", encoding="utf-8") as fh:
                fh.write(step.text + "\n")
            print(f"{step.verb} {step.arg}", flush=True)
            wrote = True
        elif step.verb == "sleep":
            time.sleep(float(step.arg))
        elif step.verb == "say":
            print(step.arg, flush=True)
        else:
            return int(step.arg)
    if not wrote:
        name = os.environ.get("SWARM_TASK_ID", "task") + ".txt"
        (root / name).write_text(prompt, encoding="utf-8")
        print(f"wrote {name}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Obey the directives of the prompt file named by the first argument."""
    args = sys.argv[1:] if argv is None else argv
    prompt = own_prompt(Path(args[0]).read_text(encoding="utf-8"))
    try:
        return _obey(Path.cwd().resolve(), prompt, directives(prompt))
    except DirectiveError as exc:
        print(f"scripted agent: {exc}", file=sys.stderr, flush=True)
        return BAD_DIRECTIVE
    except OSError as exc:
        print(f"scripted agent: {exc.strerror or exc}: {exc.filename}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
