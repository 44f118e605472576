"""The HTML run report: one self-contained file (inline CSS and JS, no network at view time).

The page's HTML, CSS and JS are package data (``resources/report.*``), inlined at write time.

The page carries the report as JSON and renders it with plain DOM and SVG strings, built once
and inserted with a single ``innerHTML`` per section, so 500 tasks render in milliseconds.
Per-task details (prompt, check output) are filled in only when opened.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from importlib import resources
from pathlib import Path

from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.paths import user_path
from worktree_swarm.core.units import format_duration as duration
from worktree_swarm.core.units import format_size
from worktree_swarm.infra import faults
from worktree_swarm.report.report_model import RunReport
from worktree_swarm.ui.report_text import (
    disk_text,
    guard_errors_text,
    money,
    outside_writes_text,
    overhead_text,
    ratio,
)

# Nothing may be fetched: no network, no other files. Inline style/script only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


_PLACEHOLDER_RE = re.compile(r"\{\{(title|csp|css|outside|data|js)\}\}")


def render_html(report: RunReport) -> str:
    """The report as one HTML document."""
    data = json.dumps(_page_data(report), separators=(",", ":"), ensure_ascii=False)
    # Inside <script>, "</script>" or "<!--" in a prompt would end the element early.
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    parts = {
        "title": _escape(f"swarm report {report.run_id}"),
        "csp": CSP,
        "css": _resource("report.css"),
        "outside": _outside_html(report),
        "data": data,
        "js": _resource("report.js"),
    }
    # One pass: a placeholder inside what is put in (a prompt reading "{{js}}") stays text.
    return _PLACEHOLDER_RE.sub(lambda m: parts[m[1]], _resource("report.html"))


@functools.cache
def _resource(name: str) -> str:
    """The text of ``resources/<name>`` shipped inside the package."""
    return resources.files(__package__).joinpath("resources", name).read_text(encoding="utf-8")


def _outside_html(report: RunReport) -> str:
    """Static lists of outside writes and failed guard scans (empty when there are none)."""
    html = ""
    for title, ident, lines in (
        ("Outside writes", "outside", outside_writes_text(report)[2:]),
        ("Guard scans that failed", "guard-errors", guard_errors_text(report)[2:]),
    ):
        if not lines:
            continue
        items = "".join(f"<li>{_escape(line.strip())}</li>" for line in lines)
        html += f'<h2>{title}</h2>\n<ul id="{ident}">{items}</ul>\n'
    return html.rstrip("\n")


def check_output(path: Path) -> None:
    """Raise BadInputError unless the report can be written to *path* (before any work)."""
    path = user_path(path, where="--html")
    if path.is_dir():
        raise BadInputError(f"--html {path}: is a directory; name a file")
    if path.exists() and not path.is_file():  # a FIFO or a device: renaming over it replaces it
        raise BadInputError(f"--html {path}: is not a regular file; name a file")
    folder = _target(path).parent
    if not folder.is_dir():
        raise BadInputError(f"--html {path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInputError(f"--html {path}: directory {folder} is not writable")


def write_html(report: RunReport, path: Path) -> None:
    """Write the report to *path* atomically (a reader never sees half a file).

    Raises BadInputError when *path* cannot be written.
    """
    path = _target(user_path(path, where="--html"))
    target_dir = path.parent
    temp: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=target_dir, prefix=f".{path.name}.", delete=False
        ) as fh:
            temp = fh.name
            fh.write(render_html(report))
        os.chmod(fh.name, 0o644)  # noqa: PTH101 - NamedTemporaryFile creates files 0600
        Path(fh.name).replace(path)
    except OSError as exc:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)  # no half-written report left beside it
        said = f"--html {path}: cannot write: {exc.strerror or exc}"
        if faults.is_full(exc):  # no bad input of yours: free some space, run it again
            raise SwarmError(f"{said}; free some space, then run `swarm report` again") from exc
        raise BadInputError(said) from exc


def _target(path: Path) -> Path:
    """Where the report goes: through symlinks (a link to your report stays a link)."""
    return Path(os.path.realpath(path))


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _rel(value: float | None, origin: float) -> float | None:
    return None if value is None else round(value - origin, 3)


def _page_data(report: RunReport) -> dict[str, object]:
    t0 = report.created_at
    s = report.totals
    cards = [
        (
            "Makespan",
            duration(s.makespan_s),
            "live, still running" if report.live else "created to end",
        ),
        ("Agent time", duration(s.agent_time_s), "sum over attempts"),
        ("Speedup", ratio(s.achieved_speedup), "agent time / makespan"),
        (
            "Ideal speedup",
            ratio(s.ideal_speedup),
            f"this DAG at --jobs {report.jobs}: {duration(s.ideal_makespan_s)}",
        ),
        ("Rate-limit waits", duration(s.rate_limit_wait_s), ""),
        ("Retries", str(s.retries), f"{s.resumes} resumes after rate limits"),
        ("Cost", money(s.total_cost_usd), f"{money(s.cost_per_done_usd)} per done task"),
        (
            "Tokens in / out",
            "-" if s.tokens_in is None else f"{s.tokens_in:,} / {s.tokens_out or 0:,}",
            "" if s.cache_read_tokens is None else f"{s.cache_read_tokens:,} cache reads",
        ),
        (
            "Token overhead",
            overhead_text(s).split(" (")[0] if s.token_overhead_pct is not None else "n/a",
            overhead_text(s),
        ),
        ("Tasks", f"{s.done}/{s.tasks} done", ", ".join(f"{n} {k}" for k, n in s.states.items())),
        ("Disk", format_size(s.disk_actual), disk_text(report)),
    ]
    cards += [  # each provider's gate as last reported: concurrency, wait and why
        (f"Gate {v.provider}", f"{v.limit}/{v.jobs}", v.describe(now=report.end))
        for v in report.providers
    ]
    tasks = [
        {
            "id": t.task_id,
            "title": t.title,
            "state": t.state,
            "reason": t.told,
            "deps": list(t.depends_on),
            "branch": t.branch,
            "start": _rel(t.started_at, t0),
            "end": _rel(t.ended_at, t0),
            "wall": t.wall_s,
            "agent": round(t.agent_s, 3),
            "att": [
                [
                    _rel(a.started_at, t0),
                    _rel(a.started_at + a.duration_s, t0),
                    a.outcome,
                    a.number,
                    a.exit_code,
                    a.reason,
                    a.agent,
                ]
                for a in t.attempts
            ],
            "spans": [[sp.kind, _rel(sp.start, t0), _rel(sp.end, t0)] for sp in t.spans],
            "retries": t.retries,
            "wait": round(t.rate_limit_wait_s, 3),
            "cost": t.cost_usd,
            "tin": t.tokens_in,
            "tout": t.tokens_out,
            "files": t.files_changed,
            "ins": t.insertions,
            "del": t.deletions,
            "disk": t.disk_actual,
            "diskApp": t.disk_apparent,
            "wt": t.worktree_present,
            "pr": t.pr_number,
            "merge": t.merge_result,
            "prUrl": t.pr_url,
            "prompt": t.prompt,
            "checks": t.checks_tail,
            "setup": t.setup_tail,
        }
        for t in report.tasks
    ]
    return {
        "run": {
            "id": report.run_id,
            "status": report.status,
            "live": report.live,
            "base": report.base_commit,
            "jobs": report.jobs,
            "created": report.created_at,
            "end": round(report.end - t0, 3),
            "generated": report.generated_at,
        },
        "cards": cards,
        "tasks": tasks,
    }
