"""The key tables of docs/manifest.md, generated from the settings table.

``python -m worktree_swarm.config.doc_table`` prints them; ``--write FILE`` puts them between
the ``<!-- generated: NAME -->`` / ``<!-- end generated -->`` markers of FILE, ``--check FILE``
exits 1 when FILE's tables are not the generated ones (tests run it: the docs cannot drift).
"""

from __future__ import annotations

import enum
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from worktree_swarm.config.settings import SETTINGS
from worktree_swarm.core.settings import Kind, Scope, Setting

if TYPE_CHECKING:
    from collections.abc import Sequence

_BLOCK_RE = re.compile(
    r"(?P<open><!-- generated: (?P<name>[a-z-]+) -->\n).*?(?P<close><!-- end generated -->)",
    re.DOTALL,
)
_HEADER = "| key | type | default | flag | meaning |\n|---|---|---|---|---|\n"
_HOUR = 3600
_MINUTE = 60


def render() -> dict[str, str]:
    """The generated blocks by name: ``task-keys``, ``defaults-keys`` and ``run-keys``."""
    task = [e for e in SETTINGS if e.scope is not Scope.RUN]
    task_only = [f"`{e.key}`" for e in SETTINGS if e.scope is Scope.TASK_ONLY]
    return {
        "task-keys": _table(task),
        "defaults-keys": f"`[defaults]` accepts every task key except {_series(task_only)}, "
        "plus these run-wide keys:\n",
        "run-keys": _table([e for e in SETTINGS if e.scope is Scope.RUN]),
    }


def update(text: str) -> str:
    """*text* with every generated block replaced by its current contents."""
    blocks = render()

    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in blocks:
            raise ValueError(f"unknown generated block {name!r} (known: {', '.join(blocks)})")
        return match.group("open") + blocks[name] + match.group("close")

    return _BLOCK_RE.sub(fill, text)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the blocks, or ``--write FILE`` / ``--check FILE``; the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stdout.write("\n".join(render().values()))
        return 0
    if len(args) != 2 or args[0] not in {"--write", "--check"}:  # noqa: PLR2004 - option + FILE
        sys.stderr.write(
            "usage: python -m worktree_swarm.config.doc_table [--write|--check FILE]\n"
        )
        return 2
    path = Path(args[1])
    text = path.read_text(encoding="utf-8")
    new = update(text)
    if args[0] == "--write":
        path.write_text(new, encoding="utf-8")
        return 0
    if new != text:
        sys.stderr.write(
            f"{path}: the key tables differ from the settings; "
            f"run python -m worktree_swarm.config.doc_table --write {path}\n"
        )
        return 1
    return 0


def _table(entries: Sequence[Setting]) -> str:
    rows = [f"| `{e.key}` | {_type(e)} | {_default(e)} | {_flag(e)} | {e.doc} |\n" for e in entries]
    return _HEADER + "".join(rows)


def _type(entry: Setting) -> str:
    if entry.type_doc:
        return entry.type_doc
    if entry.kind is Kind.INT and entry.minimum is not None:
        if entry.maximum is not None:
            return f"integer {entry.minimum}-{entry.maximum}"
        return f"integer >= {entry.minimum}"
    if entry.kind is Kind.CHOICE and entry.choices is not None:
        return _series([f"`{choice.value}`" for choice in entry.choices], word="or")
    return entry.kind.label


def _default(entry: Setting) -> str:
    value = entry.default
    if entry.default_doc:
        return entry.default_doc
    if entry.required:
        return "required"
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if value == ():
        return "`{}`" if entry.kind is Kind.ENV else "`[]`"
    if entry.kind is Kind.DURATION and isinstance(value, int | float):
        return f"`{_duration(value)}`"
    if isinstance(value, str):
        return f"`{value}`"
    return str(value)


def _flag(entry: Setting) -> str:
    flag = entry.flag
    if flag is None:
        return ""
    names = [flag.short, flag.name] if flag.short else [flag.name]
    if flag.negatable:
        names.append("--no-" + flag.name.removeprefix("--"))
    return ", ".join(f"`{name}`" for name in names)


def _duration(seconds: float) -> str:
    """How a manifest writes it: ``5s``, ``30m``, ``4h``, ``1h30m``."""
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, _HOUR)
    minutes, secs = divmod(rest, _MINUTE)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"


def _series(items: Sequence[str], *, word: str = "and") -> str:
    if len(items) < 2:  # noqa: PLR2004 - one item needs no joining word
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


if __name__ == "__main__":
    sys.exit(main())
