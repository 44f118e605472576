"""Limits read from an agent's log while it is written: what each CLI's events mean to a gate."""

from __future__ import annotations

import json
from pathlib import Path

from worktree_swarm.run.gate_model import Signal
from worktree_swarm.run.live_limits import LINE_LIMIT, LogTail

FIXTURES = Path(__file__).parent / "fixtures" / "claude"
NOW = 1_760_000_000.0


def test_claude_stream_retry_is_a_throttle_and_responses_are_successes(tmp_path: Path) -> None:
    # A real Claude Code 2.1 stream-json log: one 429 retried, two API responses, a result.
    log = tmp_path / "attempt.log"
    log.write_bytes((FIXTURES / "stream_retry.jsonl").read_bytes())
    tail = LogTail(path=log, profile="claude")
    found = tail.poll(now=NOW)
    assert [f.signal for f in found] == [Signal.THROTTLE, Signal.OK, Signal.OK]
    assert found[0].retry_at is None  # its retry_delay_ms is the CLI's own wait, not ours
    assert found[0].detail == "HTTP 429"
    assert tail.limited
    assert tail.succeeded
    assert tail.poll(now=NOW) == []  # nothing new


def test_lines_are_read_once_and_only_when_complete(tmp_path: Path) -> None:
    log = tmp_path / "attempt.log"
    retry = {"type": "system", "subtype": "api_retry", "error_status": 529, "retry_delay_ms": 0}
    line = json.dumps(retry)
    log.write_text(line[:20])
    tail = LogTail(path=log, profile="claude")
    assert tail.poll(now=NOW) == []
    with log.open("a") as fh:
        fh.write(line[20:] + "\n")
    found = tail.poll(now=NOW)
    assert [(f.signal, f.detail) for f in found] == [(Signal.THROTTLE, "HTTP 529")]


def test_claude_usage_windows(tmp_path: Path) -> None:
    log = tmp_path / "attempt.log"
    reset = NOW + 4 * 3600
    events = [
        {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed", "resetsAt": 1}},
        {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": reset}},
        {
            "type": "result",
            "is_error": True,
            "result": f"Claude AI usage limit reached|{int(reset)}",
        },
        # One response split over two events (a content block each) is one success.
        {"type": "assistant", "message": {"id": "msg_1"}},
        {"type": "assistant", "message": {"id": "msg_1"}},
    ]
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    found = LogTail(path=log, profile="claude").poll(now=NOW)
    assert [(f.signal, f.retry_at) for f in found] == [
        (Signal.WINDOW, reset),
        (Signal.WINDOW, reset),
        (Signal.OK, None),
    ]


def test_claude_codes_own_message_for_a_refused_request_is_no_success(tmp_path: Path) -> None:
    # Real Claude Code 2.1.330 logs: a request refused (429), and a 5-hour window. For each the
    # CLI prints an `assistant` event of model "<synthetic>" holding the error's text; counted
    # as a response, it kept a provider refused every time at full concurrency, and it ended
    # the window it announced at once.
    refused = LogTail(path=FIXTURES / "v2.1.330-stream-refused-429.jsonl", profile="claude")
    assert [(f.signal, f.detail) for f in refused.poll(now=NOW)] == [(Signal.THROTTLE, "HTTP 429")]
    assert not refused.succeeded
    reset = 1_796_245_008.0  # its rate_limit_event's resetsAt; printed "resets 8:56pm (UTC)"
    window = LogTail(path=FIXTURES / "v2.1.330-stream-5h-window.jsonl", profile="claude")
    assert [(f.signal, f.retry_at) for f in window.poll(now=reset - 1200)] == [
        (Signal.WINDOW, reset),
        (Signal.WINDOW, reset + 12),  # the text's 8:56pm, to the end of that minute
    ]
    assert not window.succeeded


def test_a_rejected_request_served_on_overage_is_no_window(tmp_path: Path) -> None:
    log = tmp_path / "attempt.log"
    info = {"status": "rejected", "resetsAt": NOW + 3600, "rateLimitType": "five_hour"}
    events = [
        {"type": "rate_limit_event", "rate_limit_info": {**info, "isUsingOverage": True}},
        {"type": "assistant", "message": {"id": "msg_1"}},
    ]
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    tail = LogTail(path=log, profile="claude")
    assert [(f.signal, f.retry_at) for f in tail.poll(now=NOW)] == [(Signal.OK, None)]
    assert not tail.limited


def test_codex_turns_and_usage_limit(tmp_path: Path) -> None:
    log = tmp_path / "attempt.log"
    message = (
        'unexpected status 429 Too Many Requests: {"error":{"type":"usage_limit_reached",'
        f'"resets_at":{int(NOW) + 7200}}}}}'
    )
    events = [
        {"type": "turn.completed", "usage": {}},
        {"type": "turn.failed", "error": {"message": message}},
    ]
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    found = LogTail(path=log, profile="codex").poll(now=NOW)
    assert [(f.signal, f.retry_at) for f in found] == [
        (Signal.OK, None),
        (Signal.WINDOW, NOW + 7200),
    ]


def test_free_text_agents_are_judged_at_exit_only(tmp_path: Path) -> None:
    # An echoed prompt that talks about rate limits must not slow anyone down.
    log = tmp_path / "attempt.log"
    log.write_text("Task: handle 429 Too Many Requests and rate limit exceeded errors\n")
    for profile in ("command", "aider", "scripted"):
        assert LogTail(path=log, profile=profile).poll(now=NOW) == []


def test_a_limits_message_holding_escape_sequences_is_a_reason_without_them(
    tmp_path: Path,
) -> None:
    # The message became a wait's reason on every waiting task's row in `swarm watch`, and its
    # OSC 52 reached the terminal (Rich drops a BEL but not an ESC): the clipboard written.
    log = tmp_path / "attempt.log"
    message = '\x1b]52;c;UFdORUQ=\x07\x1b]0;PWN\x07 usage_limit_reached "resets_at": 5'
    log.write_text(json.dumps({"type": "error", "message": message}) + "\n")
    (found,) = LogTail(path=log, profile="codex").poll(now=NOW)
    assert found.signal is not Signal.OK
    assert found.detail.isprintable()
    assert "usage_limit_reached" in found.detail


def test_a_retry_delay_counts_while_it_is_the_last_thing_written(tmp_path: Path) -> None:
    log = tmp_path / "attempt.log"
    retry = {"type": "system", "subtype": "api_retry", "error_status": 429, "retry_delay_ms": 48367}
    log.write_text(json.dumps(retry) + "\n")
    tail = LogTail(path=log, profile="claude")
    tail.poll(now=NOW)
    assert tail.waiting == 48.367
    with log.open("a") as fh:
        fh.write('{"type": "assistant", "mess')  # its next reply, still being written
    tail.poll(now=NOW)
    assert tail.waiting == 0.0
    # What an agent writes is trusted for 15 minutes at most: 1e300 ms had it never idle.
    retry["retry_delay_ms"] = 1e300
    log.write_text(json.dumps(retry) + "\n")
    tail = LogTail(path=log, profile="claude")
    tail.poll(now=NOW)
    assert tail.waiting == 900.0


def test_gemini_clis_own_retry_announces_its_delay_on_stderr(tmp_path: Path) -> None:
    # Real Gemini CLI 0.61.0 with `maxAttempts` 2, after a 429 whose RetryInfo asked for 20 s.
    log = tmp_path / "attempt.log"
    log.write_text(
        '{"type":"init","session_id":"986257a3-4f50-4612-9bf1-14e5522e0630"}\n'
        "Attempt 1 failed: Resource has been exhausted (e.g. check quota).\n"
        "Suggested retry after 20s.. Retrying after 22638ms...\n"
    )
    tail = LogTail(path=log, profile="gemini")
    assert tail.poll(now=NOW) == []  # its free text is no limit report
    assert tail.waiting == 22.638
    with log.open("a") as fh:  # a model's reply quoting it is no wait of the CLI
        fh.write('{"type":"message","content":"Retrying after 99999ms..."}\n')
    tail.poll(now=NOW)
    assert tail.waiting == 0.0
    with log.open("a") as fh:  # nor is any other free line saying so
        fh.write("I will wait. Retrying after 99999ms...\n")
    tail.poll(now=NOW)
    assert tail.waiting == 0.0


def test_a_line_past_the_limit_is_skipped_not_held(tmp_path: Path) -> None:
    # Held whole, an endless line without a break was copied at every poll (quadratic).
    log = tmp_path / "attempt.log"
    log.write_bytes(b"x" * (LINE_LIMIT + 1))
    tail = LogTail(path=log, profile="gemini")
    while tail.offset < log.stat().st_size:
        tail.poll(now=NOW)
    assert len(tail._partial) <= LINE_LIMIT
    with log.open("ab") as fh:  # the line goes on, then the next one is read as ever
        fh.write(b"still the same line\nSuggested retry after 20s.. Retrying after 22638ms...\n")
    tail.poll(now=NOW)
    assert tail.waiting == 22.638
