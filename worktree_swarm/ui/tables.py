"""Every terminal table swarm prints: styled by rich on a terminal, plain text otherwise.

Plain text (a pipe, a file, a test) has no colours, no borders and no wrapping: one header
line, then one line per row with columns separated by two spaces, so ``cut``/``awk`` and
``line.split()`` keep working. It is laid out here, as rich lays it out, without importing
rich (most commands and every script print plain text; rich costs ~1 ms a row and ~40 ms to
import); text rich would treat specially (control characters, tabs, newlines) goes to rich.
Cells are never markup: a task id, a reason or a log line containing ``[red]`` is shown as
written.
"""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from rich.cells import cell_len

if TYPE_CHECKING:
    from rich.table import Table

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
# Cells at most this wide are never cut on a narrow terminal (counts, times, short names).
_SHORT = 16
_GAP = 2  # spaces between two columns
_FEW = 4  # what a long text keeps at least: three characters and `…`


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    """A table column: its header, alignment, and whether its cells are task states."""

    header: str
    align: Literal["left", "right"] = "left"
    states: bool = False  # cells are TaskState values: coloured on a terminal


def stdout_is_terminal() -> bool:
    """Whether standard output is an interactive terminal (styled tables) or not (plain)."""
    return sys.stdout.isatty()


@dataclass(frozen=True, slots=True, kw_only=True)
class Grid:
    """A table to print: its columns and rows (one string per cell), and an optional title."""

    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]
    title: str | None = None


def table(
    columns: Sequence[Column], rows: Iterable[Sequence[str]], *, title: str | None = None
) -> Grid:
    """A table of *rows* (one string per column), headed by *columns*."""
    cells = tuple(tuple(row) for row in rows)
    for row in cells:
        if len(row) != len(columns):
            raise ValueError(f"a row of {len(row)} cells for {len(columns)} columns")
    return Grid(columns=tuple(columns), rows=cells, title=title)


def rich_table(grid: Grid, width: int | None = None) -> Table:
    """*grid* as a rich table (a live display draws it; styled output prints it).

    Within *width* columns where it can: the long texts (a reason, a path) give way, cut
    with ``…``; what names a row (its first cell), its state and the short cells (counts,
    times) are kept whole. Rich alone would shrink every column alike, to nothing.
    """
    from rich.table import Table  # noqa: PLC0415 - plain output never needs rich's tables
    from rich.text import Text  # noqa: PLC0415

    drawn = Table(
        title=None if grid.title is None else Text(grid.title),
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        header_style="bold",
        title_style="bold",
    )
    fitted = _fitted(grid, width)
    for column, fit in zip(grid.columns, fitted, strict=True):
        drawn.add_column(Text(column.header), justify=column.align, no_wrap=True, width=fit)
    for row in grid.rows:
        drawn.add_row(
            *(
                Text(cell, style=STATE_STYLES.get(cell, "") if column.states else "")
                for column, cell in zip(grid.columns, row, strict=True)
            )
        )
    return drawn


def _fitted(grid: Grid, width: int | None) -> list[int | None]:
    """Each column's width within *width* (None: as wide as its cells)."""
    natural = [
        max([cell_len(column.header)] + [cell_len(row[i]) for row in grid.rows])
        for i, column in enumerate(grid.columns)
    ]
    if width is None:
        return [None] * len(natural)
    room = width - _GAP * (len(natural) - 1)
    if sum(natural) <= room:
        return [None] * len(natural)
    kept = {
        i
        for i, (column, size) in enumerate(zip(grid.columns, natural, strict=True))
        if i == 0 or column.states or size <= _SHORT
    }
    sizes = list(natural)
    # The widest texts give a character each in turn, down to a few (a line still past the
    # terminal's width is cut there: the last columns then).
    while sum(sizes) > room:
        cut = [i for i in range(len(sizes)) if i not in kept and sizes[i] > _FEW]
        if not cut:
            break
        widest = max(cut, key=lambda i: sizes[i])
        sizes[widest] -= 1
    return [size if i not in kept else None for i, size in enumerate(sizes)]


def render(*parts: Grid | str, styled: bool | None = None) -> str:
    """*parts* (tables, or plain strings taken literally) as text, one after the other.

    *styled* defaults to whether stdout is a terminal: with colours and the terminal's width
    there, plain unwrapped text without trailing spaces everywhere else.
    """
    styled = stdout_is_terminal() if styled is None else styled
    if not styled and all(_plain(part) for part in parts):
        lines = [line for part in parts for line in _plain_lines(part)]
        return "\n".join(line.rstrip() for line in lines).rstrip("\n")
    return _rich_render(parts, styled=styled)


def _plain(part: Grid | str) -> bool:
    """Whether *part* holds only text that rich prints as it is (laid out here then)."""
    if isinstance(part, str):
        return part.isprintable()
    texts = [c.header for c in part.columns] + [cell for row in part.rows for cell in row]
    return part.title is None and all(text.isprintable() for text in texts)


def _plain_lines(part: Grid | str) -> list[str]:
    if isinstance(part, str):
        return [part]
    widths = [
        max([cell_len(column.header)] + [cell_len(row[i]) for row in part.rows])
        for i, column in enumerate(part.columns)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            _pad(cell, width, column.align)
            for cell, width, column in zip(cells, widths, part.columns, strict=True)
        )

    return [line([c.header for c in part.columns]), *(line(row) for row in part.rows)]


def _pad(cell: str, width: int, align: Literal["left", "right"]) -> str:
    room = " " * (width - cell_len(cell))
    return room + cell if align == "right" else cell + room


def _rich_render(parts: Sequence[Grid | str], *, styled: bool) -> str:
    from rich.console import Console  # noqa: PLC0415 - plain output never needs rich's console
    from rich.segment import Segment, Segments  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    width = shutil.get_terminal_size().columns if styled else _PLAIN_WIDTH
    console = Console(
        file=io.StringIO(),
        width=width,
        force_terminal=styled,
        color_system="auto" if styled else None,
        markup=False,
        highlight=False,
        emoji=False,
    )
    for part in parts:
        if isinstance(part, str):  # a line of its own: the terminal wraps it, never rich
            console.print(Text(part), soft_wrap=True)
        elif styled:
            # Laid out as wide as its cells (the long ones cut to fit), then each line cut at
            # the terminal's edge: rich would shrink every column alike, the first to nothing.
            drawn = rich_table(part, width)
            wide = console.options.update_width(_PLAIN_WIDTH)
            for line in console.render_lines(drawn, wide, pad=False):
                cut = Segment.adjust_line_length(line, width, pad=False)
                console.print(Segments([*cut, Segment.line()]), end="")
        else:
            console.print(rich_table(part))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    text = str(out).rstrip("\n")
    if styled:
        return text
    return "\n".join(line.rstrip() for line in text.split("\n"))
