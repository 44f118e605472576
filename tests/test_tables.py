"""Terminal tables: plain text off a terminal, data never read as rich markup."""

from __future__ import annotations

import re

import pytest

from worktree_swarm.ui.tables import Column, _rich_render, render, table

COLUMNS = (
    Column(header="task"),
    Column(header="state", states=True),
    Column(header="att", align="right"),
    Column(header="reason"),
)


def test_plain_text_is_aligned_unwrapped_and_without_trailing_spaces() -> None:
    long_reason = "word " * 100
    rows = [["a", "done", "1", ""], ["longer-task", "failed", "12", long_reason.strip()]]

    text = render("run r1", table(COLUMNS, rows), "total: 2", styled=False)

    assert text.splitlines() == [
        "run r1",
        "task         state   att  reason",
        "a            done      1",
        f"longer-task  failed   12  {long_reason.strip()}",
        "total: 2",
    ]
    assert "\x1b" not in text


def test_markup_in_data_is_shown_as_written() -> None:
    rows = [["[bold]t[/bold]", "[red]done", "1", "[/] closes nothing; [link=x]y[/link]"]]

    for styled in (False, True):
        text = render(table(COLUMNS, rows), "[green]line[/green]", styled=styled)

        assert "[bold]t[/bold]" in text
        assert "[red]done" in text
        assert "[/] closes nothing; [link=x]y[/link]" in text
        assert "[green]line[/green]" in text


def test_states_are_coloured_only_on_a_terminal() -> None:
    rows = [["a", "done", "1", "done"]]

    styled = render(table(COLUMNS, rows), styled=True)
    plain = render(table(COLUMNS, rows), styled=False)

    assert "\x1b[32mdone" in styled  # the state column, green
    assert styled.count("\x1b[32m") == 1  # not the reason that happens to read "done"
    assert "\x1b" not in plain


def test_plain_text_is_laid_out_exactly_as_rich_lays_it_out() -> None:
    # Plain output skips rich; it must read the same, whatever the cells hold: wide and
    # combining characters, emoji, markup, padding, empty cells and columns, tabs, newlines,
    # control characters and escape sequences (those go to rich itself).
    cells = [
        "", " ", "a", "  lead", "trail  ", "漢字", "🙂 ok", "e\u0301", "[red]x[/red]", "a\tb",
        "two\nlines", "bell\x07", "\x1b[31mred", "zero\u200dwidth", "x" * 70,
    ]  # fmt: skip
    rows = [[cells[i % len(cells)], "done", str(i), cells[(i * 7) % len(cells)]] for i in range(30)]
    cases = [
        ("run r1", table(COLUMNS, rows), "total: 2", "", "trailing  "),
        (table(COLUMNS, []),),
        (table(COLUMNS, [["a", "done", "1", "x"]]), "tab\there", "ctl\x07"),
    ]
    cases += [(table(COLUMNS, [row]),) for row in rows]
    for parts in cases:
        assert render(*parts, styled=False) == _rich_render(parts, styled=False), parts


def test_on_a_narrow_terminal_a_rows_name_state_and_short_cells_stay_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rich shrank every column to fit 80 columns: the task id was gone and `done` read `d…`.
    monkeypatch.setenv("COLUMNS", "60")
    grid = table(
        [Column(header="task"), Column(header="state", states=True),
         Column(header="elapsed", align="right"), Column(header="worktree"),
         Column(header="reason")],
        [["fix-the-login-loop", "done", "12.3s", "/home/me/src/app.swarm/fix-the-login-loop",
          "the agent changed nothing that the checks could see"],
         ["a2", "failed", "0.0s", "/home/me/src/app.swarm/a2", "exit 3"]],
    )  # fmt: skip
    header, first, second = (line for line in render(grid, styled=True).splitlines())
    assert strip_styles(header).split()[:3] == ["task", "state", "elapsed"]
    assert "\x1b" in first  # styled: a terminal's colours
    plain = [strip_styles(line) for line in (first, second)]
    assert plain[0].split()[:3] == ["fix-the-login-loop", "done", "12.3s"]
    assert plain[1].split()[:3] == ["a2", "failed", "0.0s"]
    assert all(len(line) <= 60 for line in plain)  # the long texts gave way


def strip_styles(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", line)
