"""Terminal tables: plain text off a terminal, data never read as rich markup."""

from __future__ import annotations

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
