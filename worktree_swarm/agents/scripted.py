"""The bundled scripted agent: follows simple directives in its prompt, needs no API key.

Used by ``swarm demo`` and by tests. It reads the prompt file given as its only argument and
obeys one directive per line (anything else is ignored, so prose around them is fine)::

    write PATH: TEXT     create/replace PATH (inside the worktree) with TEXT and a newline
    append PATH: TEXT    append TEXT and a newline to PATH
    sleep SECONDS        pause
    say TEXT             print TEXT
    exit CODE            stop now with CODE

A prompt with no ``write`` or ``append`` line writes ``<task id>.txt`` holding the prompt. The
prompt is data: nothing in it is ever run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def _safe_path(root: Path, rel: str) -> Path:
    path = (root / rel.strip()).resolve()
    if not path.is_relative_to(root):
        msg = f"refusing to write outside the worktree: {rel.strip()}"
        raise SystemExit(msg)
    return path


def main(argv: list[str] | None = None) -> int:
    """Obey the directives of the prompt file named by the first argument."""
    args = sys.argv[1:] if argv is None else argv
    prompt = Path(args[0]).read_text(encoding="utf-8")
    root = Path.cwd().resolve()
    acted = False
    for line in prompt.splitlines():
        verb, _, rest = line.strip().partition(" ")
        if verb in {"write", "append"} and ":" in rest:
            rel, _, text = rest.partition(":")
            path = _safe_path(root, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a" if verb == "append" else "w", encoding="utf-8") as fh:
                fh.write(text.strip() + "\n")
            print(f"{verb} {rel.strip()}", flush=True)
            acted = True
        elif verb == "sleep":
            time.sleep(float(rest))
        elif verb == "say":
            print(rest, flush=True)
        elif verb == "exit":
            return int(rest)
    if not acted:
        name = os.environ.get("SWARM_TASK_ID", "task") + ".txt"
        (root / name).write_text(prompt, encoding="utf-8")
        print(f"wrote {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
