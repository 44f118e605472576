"""Every terminal table swarm prints, drawn by rich: styled on a terminal, plain text otherwise.

Plain text (a pipe, a file, a test) has no colours, no borders and no wrapping: one header
line, then one line per row with columns separated by two spaces, so ``cut``/``awk`` and
``line.split()`` keep working. Cells are always :class:`~rich.text.Text`, never markup: a
task id, a reason or a log line containing ``[red]`` is shown as written.
"""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

# How task states look on a terminal; states not listed keep the default colour.
STATE_STYLES = {
    "done": "green",
    "merged": "green",
    "failed": "red",
    "timed_out": "red",
    "conflicted": "red",
    "blocked": "yellow",
    "stopped": "yellow",
    "no_changes": "yellow",
    "running": "cyan",
    "checking": "cyan",
    "rate_limited": "cyan",
}
# Wide enough that plain output never wraps: a line too long for a terminal is the reader's.
_PLAIN_WIDTH = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    """A table column: its header, alignment, and whether its cells are task states."""

    header: str
    align: Literal["left", "right"] = "left"
    states: bool = False  # cells are TaskState values: coloured on a terminal


def stdout_is_terminal() -> bool:
    """Whether standard output is an interactive terminal (styled tables) or not (plain)."""
    return sys.stdout.isatty()


def table(
    columns: Sequence[Column], rows: Iterable[Sequence[str]], *, title: str | None = None
) -> Table:
    """A rich table of *rows* (one string per column), headed by *columns*."""
    grid = Table(
        title=None if title is None else Text(title),
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        header_style="bold",
        title_style="bold",
    )
    for column in columns:
        grid.add_column(Text(column.header), justify=column.align, no_wrap=True)
    for row in rows:
        grid.add_row(
            *(
                Text(cell, style=STATE_STYLES.get(cell, "") if column.states else "")
                for column, cell in zip(columns, row, strict=True)
            )
        )
    return grid


def render(*parts: RenderableType, styled: bool | None = None) -> str:
    """*parts* (tables, or plain strings taken literally) as text, one after the other.

    *styled* defaults to whether stdout is a terminal: with colours and the terminal's width
    there, plain unwrapped text without trailing spaces everywhere else.
    """
    styled = stdout_is_terminal() if styled is None else styled
    console = Console(
        file=io.StringIO(),
        width=shutil.get_terminal_size().columns if styled else _PLAIN_WIDTH,
        force_terminal=styled,
        color_system="auto" if styled else None,
        markup=False,
        highlight=False,
        emoji=False,
    )
    for part in parts:
        if isinstance(part, str):  # a line of its own: the terminal wraps it, never rich
            console.print(Text(part), soft_wrap=True)
        else:
            console.print(part)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    text = str(out).rstrip("\n")
    if styled:
        return text
    return "\n".join(line.rstrip() for line in text.split("\n"))
