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
const files = (n) => `${n} ${n === 1 ? "file" : "files"}`;
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
    for (const [s, e, outcome, n, code, why, agent] of t.att) {
      const x0 = x(s), w = Math.max(1.5, x(e) - x0);
      const tip = `${t.id} attempt ${n}${agent ? ` (${agent})` : ""}: ${outcome}, ${dur(e - s)}` +
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
  ["diff", "files", (t) => (t.files ? `${files(t.files)} +${t.ins} -${t.del}` : "-")],
  ["merge/PR", "pr", (t) => [t.merge, t.pr ? `#${t.pr}` : ""].filter(Boolean).join(", ") || "-"],
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
    t.files ? `diff: ${files(t.files)} changed, +${t.ins} -${t.del}` : "diff: -",
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
