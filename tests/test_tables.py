"""Terminal tables: plain text off a terminal, data never read as rich markup."""

from __future__ import annotations

from worktree_swarm.ui.tables import Column, render, table

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
