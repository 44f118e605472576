"""The HTML run report: one self-contained file (inline CSS and JS, no network at view time).

The page carries the report as JSON and renders it with plain DOM and SVG strings, built once
and inserted with a single ``innerHTML`` per section, so 500 tasks render in milliseconds.
Per-task details (prompt, check output) are filled in only when opened.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from worktree_swarm.disk import format_size
from worktree_swarm.errors import BadInputError
from worktree_swarm.report import (
    RunReport,
    disk_text,
    duration,
    money,
    outside_writes_text,
    overhead_text,
    ratio,
)

# Nothing may be fetched: no network, no other files. Inline style/script only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def render_html(report: RunReport) -> str:
    """The report as one HTML document."""
    data = json.dumps(_page_data(report), separators=(",", ":"), ensure_ascii=False)
    # Inside <script>, "</script>" or "<!--" in a prompt would end the element early.
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = f"swarm report {report.run_id}"
    return (
        _TEMPLATE.replace("{{title}}", _escape(title))
        .replace("{{csp}}", CSP)
        .replace("{{css}}", _CSS)
        .replace("{{outside}}", _outside_html(report))
        .replace("{{data}}", data)
        .replace("{{js}}", _JS)
    )


def _outside_html(report: RunReport) -> str:
    """Static list of writes agents made outside their worktrees (empty when none)."""
    if not report.outside_writes:
        return ""
    lines = outside_writes_text(report)[2:]
    # Braces escaped too: the template's {{placeholders}} are filled after this.
    items = "".join(f"<li>{_escape(line.strip()).replace('{', '&#123;')}</li>" for line in lines)
    return f'<h2>Outside writes</h2>\n<ul id="outside">{items}</ul>'


def check_output(path: Path) -> None:
    """Raise BadInputError unless the report can be written to *path* (before any work)."""
    path = path.expanduser()
    folder = path.absolute().parent
    if path.is_dir():
        raise BadInputError(f"--html {path}: is a directory; name a file")
    if not folder.is_dir():
        raise BadInputError(f"--html {path}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInputError(f"--html {path}: directory {folder} is not writable")


def write_html(report: RunReport, path: Path) -> None:
    """Write the report to *path* atomically (a reader never sees half a file).

    Raises BadInputError when *path* cannot be written.
    """
    path = path.expanduser()
    target_dir = path.parent if str(path.parent) else Path()
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=target_dir, prefix=f".{path.name}.", delete=False
        ) as fh:
            fh.write(render_html(report))
        os.chmod(fh.name, 0o644)  # noqa: PTH101 - NamedTemporaryFile creates files 0600
        Path(fh.name).replace(path)
    except OSError as exc:
        raise BadInputError(f"--html {path}: cannot write: {exc.strerror or exc}") from exc


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
    tasks = [
        {
            "id": t.task_id,
            "title": t.title,
            "state": t.state,
            "reason": t.reason,
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


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{csp}}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<link rel="icon" href="data:,">
<title>{{title}}</title>
<style>{{css}}</style>
</head>
<body>
<header><h1>{{title}}</h1><p id="meta"></p></header>
<section id="totals" class="cards"></section>
<h2>Timeline</h2>
<div id="legend" class="legend"></div>
<div id="timeline" class="timeline"></div>
<h2>Tasks</h2>
<div class="table-wrap"><table id="summary"><thead></thead><tbody></tbody></table></div>
<h2>Details</h2>
<div id="details"></div>
{{outside}}
<noscript>This report needs JavaScript to draw; the data is in the swarm-data element.</noscript>
<script type="application/json" id="swarm-data">{{data}}</script>
<script>{{js}}</script>
</body>
</html>
"""

_CSS = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;
--lane:#f6f8fa;--card:#f6f8fa;--done:#1a7f37;--merged:#8250df;--failed:#cf222e;
--timed_out:#bc4c00;--stopped:#6e7781;--no_changes:#8c959f;--running:#0969da;
--rate:#bf3989;--checks:#9a6700;--edge:#57606a;--blocked:#953800;--hl:#0969da}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#9198a1;
--line:#3d444d;--lane:#151b23;--card:#151b23;--done:#3fb950;--merged:#a371f7;
--failed:#f85149;--timed_out:#db6d28;--stopped:#8b949e;--no_changes:#656c76;
--running:#4493f8;--rate:#db61a2;--checks:#d29922;--edge:#9198a1;--blocked:#f0883e;
--hl:#4493f8}}
*{box-sizing:border-box}
body{margin:0;padding:16px 24px;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
#meta{color:var(--muted);margin:0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:8px;
margin-top:12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px 10px}
.card b{display:block;font-size:18px}.card span,.card small{color:var(--muted)}
.card small{display:block;font-size:12px}
.legend{display:flex;flex-wrap:wrap;gap:12px;color:var(--muted);font-size:12px;margin:4px 0}
.legend i{display:inline-block;width:14px;height:10px;border-radius:2px;margin-right:4px;
vertical-align:-1px}
.timeline{overflow-x:auto;border:1px solid var(--line);border-radius:6px}
svg{display:block;font:11px ui-monospace,SFMono-Regular,Menlo,monospace}
.lane-bg{fill:transparent}.odd .lane-bg{fill:var(--lane)}
.lane:hover .lane-bg{fill:var(--line)}.lane{cursor:pointer}
.lbl{fill:var(--fg)}.note{fill:var(--muted)}.grid{stroke:var(--line)}
.tick{fill:var(--muted)}
.o-done,.o-succeeded,.i-done{fill:var(--done);background:var(--done)}
.o-merged{fill:var(--merged)}.o-failed,.i-failed{fill:var(--failed);background:var(--failed)}
.o-timed_out,.i-timed_out{fill:var(--timed_out);background:var(--timed_out)}
.o-stopped,.i-stopped{fill:var(--stopped);background:var(--stopped)}
.o-no_changes,.i-no_changes{fill:var(--no_changes);background:var(--no_changes)}
.o-running,.i-running{fill:var(--running);background:var(--running)}
.o-rate_limited,.o-unknown{fill:var(--rate)}
.chk{fill:url(#hatch);stroke:var(--checks)}.i-chk{background:var(--checks)}
.hatch{fill:var(--checks)}
.rl{fill:url(#stripes);stroke:var(--rate)}.i-rl{background:var(--rate)}.stripe{fill:var(--rate)}
.edge{fill:none;stroke:var(--edge);stroke-opacity:.35;stroke-width:1;pointer-events:none}
.edge.hl{stroke:var(--hl);stroke-opacity:1;stroke-width:2}
.arrow{fill:var(--edge)}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid var(--line);white-space:nowrap}
th{cursor:pointer;user-select:none;position:sticky;top:0;background:var(--bg)}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.st{display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:6px;
background:var(--stopped)}
.s-done .st{background:var(--done)}.s-merged .st{background:var(--merged)}
.s-failed .st,.s-conflicted .st{background:var(--failed)}
.s-timed_out .st{background:var(--timed_out)}.s-blocked .st{background:var(--blocked)}
.s-running .st,.s-checking .st{background:var(--running)}.s-rate_limited .st{background:var(--rate)}
a{color:var(--hl)}
details.task{border:1px solid var(--line);border-radius:6px;margin:4px 0;padding:4px 10px}
details.task[open]{padding-bottom:10px}
summary{cursor:pointer}summary .why{color:var(--muted);margin-left:8px}
pre{background:var(--card);border:1px solid var(--line);border-radius:4px;padding:8px;
overflow:auto;max-height:360px;white-space:pre-wrap;word-break:break-word;margin:4px 0}
.body h3{font-size:13px;margin:10px 0 2px}
"""

_JS = r"""
(() => {
"use strict";
const T0 = performance.now();
const D = JSON.parse(document.getElementById("swarm-data").textContent);
const tasks = D.tasks;
const byId = new Map(tasks.map((t, i) => [t.id, i]));
const $ = (id) => document.getElementById(id);
const ESC = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
const cls = (s) => String(s).replace(/[^a-z_]/g, "");
const pad = (n) => String(n).padStart(2, "0");
const dur = (s) => {
  if (s == null) return "-";
  if (s < 60) return s.toFixed(1) + "s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m" + pad(Math.floor(s % 60)) + "s";
  return Math.floor(m / 60) + "h" + pad(m % 60) + "m";
};
const money = (x) => (x == null ? "-" : "$" + x.toFixed(2));
const NUMBER = new Intl.NumberFormat("en-US");  // toLocaleString builds one per call
const num = (x) => (x == null ? "-" : NUMBER.format(x));
const size = (n) => {
  if (n == null) return "-";
  if (n < 1024) return n + "B";
  let v = n, u = 0;
  while (v >= 1024 && u < 5) { v /= 1024; u += 1; }
  return (v < 10 ? v.toFixed(1) : Math.round(v)) + " KMGTP"[u];
};
const first = (s) => String(s || "").split("\n")[0];
const timings = {};
const timed = (name, fn) => {
  const s = performance.now();
  fn();
  timings[name] = performance.now() - s;
};

function renderHeader() {
  const r = D.run;
  const when = new Date(r.created * 1000).toISOString().replace("T", " ").slice(0, 19);
  $("meta").textContent = `${r.status}${r.live ? " (live)" : ""} · started ${when} UTC · base ` +
    `${r.base.slice(0, 10)} · --jobs ${r.jobs} · ${tasks.length} tasks`;
  $("totals").innerHTML = D.cards.map(([label, value, hint]) =>
    `<div class="card"><span>${esc(label)}</span><b>${esc(value)}</b>` +
    `<small>${esc(hint)}</small></div>`
  ).join("");
  const items = [["done", "succeeded"], ["failed", "failed"], ["timed_out", "timed out"],
    ["stopped", "stopped"], ["no_changes", "no changes"], ["running", "running"],
    ["chk", "checks"], ["rl", "rate-limit wait"]];
  $("legend").innerHTML =
    items.map(([c, l]) => `<span><i class="i-${c}"></i>${l}</span>`).join("") +
    "<span>lines: dependencies (hover a lane)</span>";
}

const LANE = 18, BAR = 12, LABEL = 180, AXIS = 22, RIGHT = 16;

function niceStep(raw) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800];
  for (const s of steps) if (s >= raw) return s;
  return Math.ceil(raw / 86400) * 86400 || 1;
}

function renderTimeline() {
  const box = $("timeline");
  const width = Math.max(640, box.clientWidth - 2);
  const span = Math.max(D.run.end, 0.001);
  const scale = (width - LABEL - RIGHT) / span;
  const x = (t) => LABEL + Math.max(0, Math.min(t, span)) * scale;
  const height = AXIS + tasks.length * LANE + 4;
  const out = [`<svg width="${width}" height="${height}" role="img" aria-label="timeline">`,
    '<defs><pattern id="hatch" width="5" height="5" patternUnits="userSpaceOnUse" ' +
    'patternTransform="rotate(45)"><rect class="hatch" width="2" height="5"/></pattern>' +
    '<pattern id="stripes" width="6" height="6" patternUnits="userSpaceOnUse" ' +
    'patternTransform="rotate(-45)"><rect class="stripe" width="3" height="6"/></pattern>' +
    '<marker id="arrow" viewBox="0 0 6 6" refX="6" refY="3" markerWidth="6" markerHeight="6" ' +
    'orient="auto"><path class="arrow" d="M0,0L6,3L0,6z"/></marker></defs>'];
  const step = niceStep(span / Math.max(1, (width - LABEL) / 90));
  for (let t = 0; t <= span + 1e-9; t += step) {
    const gx = x(t).toFixed(1);
    out.push(`<line class="grid" x1="${gx}" x2="${gx}" y1="${AXIS - 4}" y2="${height}"/>` +
      `<text class="tick" x="${gx}" y="${AXIS - 8}" text-anchor="middle">${dur(t)}</text>`);
  }
  for (let i = 0; i < tasks.length; i++) {
    const t = tasks[i];
    const y = AXIS + i * LANE;
    const id = esc(t.id);
    const short = t.id.length > 24 ? esc(t.id.slice(0, 23)) + "…" : id;
    out.push(`<g class="lane s-${cls(t.state)}${i % 2 ? " odd" : ""}" data-lane="${id}" ` +
      `transform="translate(0 ${y})"><rect class="lane-bg" width="${width}" height="${LANE}"/>` +
      `<text class="lbl" x="6" y="${LANE - 5}">${short}` +
      `<title>${id}: ${esc(t.state)}</title></text>`);
    for (const [s, e, outcome, n, code, why] of t.att) {
      const x0 = x(s), w = Math.max(1.5, x(e) - x0);
      const tip = `${t.id} attempt ${n}: ${outcome}, ${dur(e - s)}` +
        (code == null ? "" : ` (exit ${code})`) + (why ? `\n${first(why)}` : "");
      out.push(`<rect class="bar o-${cls(outcome)}" x="${x0.toFixed(1)}" y="${(LANE - BAR) / 2}" ` +
        `width="${w.toFixed(1)}" height="${BAR}" rx="2"><title>${esc(tip)}</title></rect>`);
    }
    for (const [kind, s, e] of t.spans) {
      const x0 = x(s), w = Math.max(1.5, x(e) - x0);
      const c = kind === "checks" ? "chk" : "rl";
      const label = kind === "checks" ? "checks" : "rate-limit wait";
      out.push(`<rect class="${c}" x="${x0.toFixed(1)}" y="${(LANE - BAR) / 2}" ` +
        `width="${w.toFixed(1)}" height="${BAR}">` +
        `<title>${id} ${label}: ${dur(e - s)}</title></rect>`);
    }
    if (!t.att.length) {
      const at = t.end ?? t.start ?? 0;
      out.push(`<text class="note" x="${(x(at) + 4).toFixed(1)}" y="${LANE - 5}">` +
        `${esc(t.state)}${t.reason ? ": " + esc(first(t.reason).slice(0, 80)) : ""}</text>`);
    }
    out.push("</g>");
  }
  for (let i = 0; i < tasks.length; i++) {
    const t = tasks[i];
    const to = t.att.length ? t.att[0][0] : (t.start ?? t.end);
    if (to == null) continue;
    for (const dep of t.deps) {
      const j = byId.get(dep);
      if (j === undefined) continue;
      const d = tasks[j];
      const from = d.end ?? (d.att.length ? d.att[d.att.length - 1][1] : null);
      if (from == null) continue;
      const x1 = x(from), y1 = AXIS + j * LANE + LANE / 2;
      const x2 = Math.max(x(to), x1 + 6), y2 = AXIS + i * LANE + LANE / 2;
      const bend = Math.max(8, (x2 - x1) / 2);
      const c1 = (x1 + bend).toFixed(1), c2 = (x2 - bend).toFixed(1);
      out.push(`<path class="edge" data-a="${esc(dep)}" data-b="${esc(t.id)}" ` +
        `marker-end="url(#arrow)" d="M${x1.toFixed(1)},${y1}C${c1},${y1} ${c2},${y2} ` +
        `${x2.toFixed(1)},${y2}"/>`);
    }
  }
  out.push("</svg>");
  box.innerHTML = out.join("");
}

const COLUMNS = [
  ["task", "id", (t) => `<a href="#task-${esc(t.id)}" data-open="${esc(t.id)}">${esc(t.id)}</a>`],
  ["outcome", "state", (t) => `<span class="st"></span>${esc(t.state)}`],
  ["attempts", (t) => t.att.length, (t) => t.att.length, "n"],
  ["wall", "wall", (t) => dur(t.wall), "n"],
  ["agent", "agent", (t) => dur(t.agent), "n"],
  ["rate-limit wait", "wait", (t) => (t.wait ? dur(t.wait) : "-"), "n"],
  ["cost", "cost", (t) => money(t.cost), "n"],
  ["tokens in", "tin", (t) => num(t.tin), "n"],
  ["tokens out", "tout", (t) => num(t.tout), "n"],
  ["disk", "disk", (t) => size(t.disk), "n"],
  ["diff", "files", (t) => (t.files ? `${t.files} files +${t.ins} -${t.del}` : "-")],
  ["merge/PR", "pr", (t) => (t.pr ? `#${t.pr}` : t.state === "merged" ? "merged" : "-")],
];
let order = tasks.map((_, i) => i);

function renderTable() {
  const table = $("summary");
  table.tHead.innerHTML = "<tr>" + COLUMNS.map(([h, , , c], k) =>
    `<th data-col="${k}"${c ? ` class="${c}"` : ""}>${h}</th>`).join("") + "</tr>";
  renderRows();
}

function renderRows() {
  $("summary").tBodies[0].innerHTML = order.map((i) => {
    const t = tasks[i];
    return `<tr class="s-${cls(t.state)}">` + COLUMNS.map(([, , f, c]) =>
      `<td${c ? ` class="${c}"` : ""}>${f(t)}</td>`).join("") + "</tr>";
  }).join("");
}

let sorted = -1;
function sortBy(k) {
  const key = COLUMNS[k][1];
  const get = typeof key === "function" ? key : (t) => t[key];
  const dir = sorted === k ? -1 : 1;
  order.sort((a, b) => {
    const va = get(tasks[a]), vb = get(tasks[b]);
    if (va == null) return 1;
    if (vb == null) return -1;
    return (va < vb ? -1 : va > vb ? 1 : 0) * dir;
  });
  sorted = dir === 1 ? k : -1;
  renderRows();
}

function renderDetails() {
  $("details").innerHTML = tasks.map((t, i) =>
    `<details class="task s-${cls(t.state)}" id="task-${esc(t.id)}" data-i="${i}"><summary>` +
    `<span class="st"></span><b>${esc(t.id)}</b> ${esc(t.state)}` +
    `<span class="why">${esc(first(t.title || t.reason).slice(0, 120))}</span></summary>` +
    '<div class="body"></div></details>').join("");
}

function block(parent, heading, text) {
  const h = document.createElement("h3");
  h.textContent = heading;
  const pre = document.createElement("pre");
  pre.textContent = text;
  parent.append(h, pre);
}

function fillDetails(el) {
  const body = el.querySelector(".body");
  if (!body || body.childElementCount) return;
  const t = tasks[Number(el.dataset.i)];
  const facts = [`branch ${t.branch}`, t.deps.length ? `depends on ${t.deps.join(", ")}` : "",
    t.files ? `diff: ${t.files} files changed, +${t.ins} -${t.del}` : "diff: -",
    `attempts: ${t.att.length} (${t.retries} retries)`, `cost ${money(t.cost)}`,
    t.disk == null ? "" : `disk: ${size(t.disk)} (${size(t.diskApp)} apparent)` +
      (t.wt ? "" : ", worktree removed since"),
    t.prUrl ? `pull request #${t.pr} ${t.prUrl}` : ""].filter(Boolean);
  block(body, "Facts", facts.join("\n"));
  if (t.reason) block(body, "Reason", t.reason);
  block(body, "Prompt", t.prompt || "-");
  if (t.att.length) {
    block(body, "Attempts", t.att.map(([s, e, o, n, code, why]) =>
      `#${n} ${o} at +${dur(s)} for ${dur(e - s)}` + (code == null ? "" : ` exit ${code}`) +
      (why ? ` ${first(why)}` : "")).join("\n"));
  }
  block(body, "Checks output (tail)", t.checks || "-");
  if (t.setup) block(body, "Setup output (tail)", t.setup);
}

function openTask(id) {
  const el = document.getElementById("task-" + id);
  if (!el) return;
  el.open = true;
  fillDetails(el);
  el.scrollIntoView({block: "start"});
}

function wire() {
  let lit = [];
  const svgBox = $("timeline");
  svgBox.addEventListener("mouseover", (ev) => {
    const lane = ev.target.closest("[data-lane]");
    for (const p of lit) p.classList.remove("hl");
    lit = [];
    if (!lane) return;
    const id = CSS.escape(lane.dataset.lane);
    lit = [...svgBox.querySelectorAll(`path[data-a="${id}"],path[data-b="${id}"]`)];
    for (const p of lit) p.classList.add("hl");
  });
  svgBox.addEventListener("click", (ev) => {
    const lane = ev.target.closest("[data-lane]");
    if (lane) openTask(lane.dataset.lane);
  });
  $("summary").addEventListener("click", (ev) => {
    const th = ev.target.closest("th");
    if (th) { sortBy(Number(th.dataset.col)); return; }
    const a = ev.target.closest("a[data-open]");
    if (a) { ev.preventDefault(); openTask(a.dataset.open); }
  });
  document.addEventListener("toggle", (ev) => {
    const el = ev.target;
    if (el.matches && el.matches("details.task") && el.open) fillDetails(el);
  }, true);
  let pending = 0;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(renderTimeline, 150);
  });
}

timed("header", renderHeader);
timed("timeline", renderTimeline);
timed("table", renderTable);
timed("details", renderDetails);
wire();
window.swarmReport = {lanes: tasks.length, timings, renderMs: performance.now() - T0};
})();
"""
