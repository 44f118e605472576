"""Rate limits: a 429 storm, and a provider in a usage window with a fallback agent.

    python benchmarks/bench_ratelimit.py [--tasks 24] [--jobs 6] [--fraction 0.3] [--turns 6]

Each fake agent is a small program that works like a coding agent against a Messages-style API:
it makes one request per turn to a local stub server (127.0.0.1), sending its whole
conversation so far (input tokens grow per turn), writes a file per turn into its worktree, and
prints Claude Code's stream-json events: an ``assistant`` event per answered request (what the
gate's per-request AIMD reads live), and on a 429 Claude Code's result (`is_error: true`,
`api_error_status: 429`, its `session_id`). Resumed with `--resume <session>`, it continues
from the turn it reached; the context grows by the resume message each time a session is
resumed, which is what a rate limit costs in tokens (a request answered 429 was not processed,
so it costs none). A fake `codex` does the same with Codex's `--json` events.

Three batches run in this process: no limits (the baseline), the storm (the stub answers 429 to
a seeded share of requests), and a usage window (every Anthropic request is answered with
Claude Code's usage limit, reset hours away, and the tasks have `fallback = ["codex"]`).
"""

from __future__ import annotations

import argparse
import http.server
import itertools
import json
import os
import platform
import random
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FAKE_AGENT = r"""#!PYTHON
import json, os, pathlib, random, sys, time, urllib.error, urllib.request
args = sys.argv[1:]
task = os.environ["SWARM_TASK_ID"]
codex = pathlib.Path(sys.argv[0]).name == "codex"
if codex:
    session = args[args.index("resume") + 1] if "resume" in args else f"c-{task}"
else:
    session = args[args.index("--resume") + 1] if "--resume" in args else f"s-{task}"
state = pathlib.Path(os.environ["BENCH_STATE"]) / f"{session}.json"
saved = json.loads(state.read_text()) if state.exists() else {"turn": 0, "resumes": 0}
turn, resumes = saved["turn"], saved["resumes"] + ("--resume" in args)
turns, url = int(os.environ["BENCH_TURNS"]), os.environ["BENCH_URL"]
spent_in = spent_out = 0
def emit(obj):
    print(json.dumps(obj), flush=True)
def finish_codex(error=None):
    if error:
        emit({"type": "turn.failed", "error": {"message": error}})
        sys.exit(1)
    emit({"type": "turn.completed", "usage": {"input_tokens": spent_in,
          "cached_input_tokens": 0, "output_tokens": spent_out}})
    sys.exit(0)
def finish(error=False, window=None):
    if codex:
        finish_codex("exceeded retry limit, last status: 429" if error else None)
    if window:
        emit({"type": "rate_limit_event", "session_id": session,
              "rate_limit_info": {"status": "rejected", "resetsAt": window}})
        emit({"type": "result", "subtype": "success", "is_error": True, "session_id": session,
              "result": f"Claude AI usage limit reached|{window}", "usage": {}})
        sys.exit(1)
    out = {"type": "result", "subtype": "success", "is_error": error, "session_id": session,
           "num_turns": turn, "total_cost_usd": (spent_in * 3 + spent_out * 15) / 1e6,
           "usage": {"input_tokens": spent_in, "output_tokens": spent_out,
                     "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}
    if error:
        out["api_error_status"] = 429
        out["result"] = "API Error: 429 rate_limit_error"
    print(json.dumps(out), flush=True)
    sys.exit(1 if error else 0)
emit({"type": "thread.started", "thread_id": session} if codex else
     {"type": "system", "subtype": "init", "session_id": session})
# Like Claude Code (CLAUDE_CODE_MAX_RETRIES, default 10): a 429 is retried after base * 2^n,
# up to 25% less (jitter), each retry announced as a stream event; out of retries, it exits.
# Claude Code's base is 500 ms against requests of seconds; here it is scaled with the latency.
max_retries, retried = int(os.environ.get("CLAUDE_CODE_MAX_RETRIES", "10")), 0
retry_base = float(os.environ["BENCH_RETRY_BASE"])
while turn < turns:
    # The conversation so far, resent every request; each resume leaves its "continue" message
    # (and the model's reply to it) in the conversation: that is what a rate limit costs.
    context = 2000 + 800 * turn + 150 * resumes
    req = urllib.request.Request(url, data=json.dumps({"input_tokens": context}).encode(),
                                 headers={"content-type": "application/json",
                                          "x-provider": "openai" if codex else "anthropic"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 429:
            reset = json.loads(exc.read()).get("resets_at")
            if reset is None and retried < max_retries:
                retried += 1
                delay = min(32.0, retry_base * 2 ** (retried - 1)) * random.uniform(0.75, 1.0)
                if not codex:
                    emit({"type": "system", "subtype": "api_retry", "attempt": retried,
                          "max_retries": max_retries, "retry_delay_ms": int(delay * 1000),
                          "error_status": 429, "error": "rate_limit", "session_id": session})
                time.sleep(delay)
                continue
            finish(error=True, window=reset)
        raise
    retried = 0
    spent_in += body["usage"]["input_tokens"]
    spent_out += body["usage"]["output_tokens"]
    turn += 1
    if not codex:
        emit({"type": "assistant", "session_id": session,
              "message": {"id": f"msg-{session}-{turn}", "usage": body["usage"]}})
    pathlib.Path(f"turn-{turn}.txt").write_text(f"{task} turn {turn}\n")
    state.write_text(json.dumps({"turn": turn, "resumes": resumes}))
finish()
"""


class Stub(http.server.ThreadingHTTPServer):
    """Answers like a model: fixed latency, usage echoed, 429 for a seeded fraction."""

    daemon_threads = True

    def __init__(self, fraction: float, latency: float, seed: int, *, window: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.window = window  # Anthropic is in a usage window for the whole run
        self.fraction = fraction
        self.latency = latency
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = self.limited = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Stub

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002, ARG002
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        window = self.server.window and self.headers.get("x-provider") == "anthropic"
        with self.server.lock:
            self.server.requests += 1
            limited = window or self.server.rng.random() < self.server.fraction
            self.server.limited += limited
        if window:
            reset = int(time.time()) + 5 * 3600
            self._send(429, {"type": "error", "resets_at": reset})
            return
        if limited:
            self._send(429, {"type": "error", "error": {"type": "rate_limit_error"}})
            return
        time.sleep(self.server.latency)  # the model "thinking": stands in for real latency
        self._send(200, {"usage": {"input_tokens": body["input_tokens"], "output_tokens": 300}})

    def _send(self, code: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def run_batch(
    args: argparse.Namespace, fraction: float, *, window: bool = False, agent_retries: int = 10
) -> dict[str, float]:
    stub = Stub(fraction, args.latency, args.seed, window=window)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory(prefix="swarm-storm-") as tmp:
            base = Path(tmp)
            repo = base / "repo"
            repo.mkdir()
            (repo / "README.md").write_text("storm\n")
            ident = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
            subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
            subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
            subprocess.run(["git", *ident, "commit", "-qm", "init"], cwd=repo, check=True)
            bin_dir, state = base / "bin", base / "state"
            bin_dir.mkdir()
            state.mkdir()
            for name in ("claude", "codex"):
                exe = bin_dir / name
                exe.write_text(FAKE_AGENT.replace("PYTHON", sys.executable))
                exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
            tasks = "".join(
                f'[[task]]\nid = "t{i:02d}"\nprompt = "task {i}"\n' for i in range(args.tasks)
            )
            (base / "tasks.toml").write_text(
                f'[defaults]\nagent = "claude"\njobs = {args.jobs}\nretries = 20\n'
                f'rate_limit_backoff = "{args.backoff}s"\n'
                + ('fallback = ["codex"]\n' if window else "")
                + tasks
            )
            env = {
                **os.environ,
                "CLAUDE_CODE_MAX_RETRIES": str(agent_retries),
                # swarm refuses a `claude` task that is not signed in; the fake needs no key.
                "ANTHROPIC_API_KEY": "bench-key-not-used",
                "BENCH_RETRY_BASE": str(args.agent_retry_base),
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                "BENCH_STATE": str(state),
                "BENCH_TURNS": str(args.turns),
                "BENCH_URL": f"http://127.0.0.1:{stub.server_address[1]}/v1/messages",
            }
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "worktree_swarm.cli", "run", str(base / "tasks.toml")],
                cwd=repo, env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            wall = time.perf_counter() - start
            if not (repo / ".git" / "swarm" / "state.db").exists():
                sys.exit(f"swarm run failed to start (exit {proc.returncode}): {proc.stderr}")
            with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
                done = db.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0]
                attempts = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
                tokens = db.execute(
                    "SELECT sum(tokens_in) + sum(tokens_out) FROM attempts"
                ).fetchone()[0]
                gates = [
                    json.loads(row[0])
                    for row in db.execute("SELECT data FROM events WHERE kind = 'gate'")
                ]
                anthropic = [g for g in gates if g["provider"] == "anthropic"]
                by_codex = db.execute(
                    "SELECT count(*) FROM tasks WHERE state = 'done' AND task_id IN"
                    " (SELECT task_id FROM attempts WHERE agent = 'codex')"
                ).fetchone()[0]
            turns_kept = sum(
                len(subprocess.run(
                    ["git", "ls-tree", "--name-only", f"swarm/t{i:02d}"], cwd=repo,
                    capture_output=True, text=True, check=True,
                ).stdout.split()) - 1
                for i in range(args.tasks)
            )  # fmt: skip
    finally:
        stub.shutdown()
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:])
    return {
        "exit": proc.returncode,
        "done": done,
        "attempts": attempts,
        "wall": wall,
        "tokens": tokens or 0,
        "requests": stub.requests,
        "limited": stub.limited,
        "turn_files": turns_kept,
        "by_codex": by_codex,
        "min_limit": min((g["limit"] for g in anthropic), default=0),
        "cuts": sum(b < a for a, b in itertools.pairwise(g["limit"] for g in anthropic)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--backoff", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--agent-retries", type=int, default=10, help="the agent's own 429 retries (Claude: 10)"
    )
    parser.add_argument(
        "--agent-retry-base",
        type=float,
        default=0.05,
        help="the agent's first retry delay (Claude: 0.5s against requests of ~10s)",
    )
    args = parser.parse_args()
    print(f"machine: {platform.system()} {platform.release()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(f"tasks {args.tasks}, jobs {args.jobs}, turns/task {args.turns}, "
          f"429 fraction {args.fraction}, backoff base {args.backoff}s, latency {args.latency}s, "
          f"agent retries {args.agent_retries} from {args.agent_retry_base}s")  # fmt: skip
    calm = run_batch(args, 0.0)
    storm = run_batch(args, args.fraction, agent_retries=args.agent_retries)
    harsh = run_batch(args, args.fraction, agent_retries=0)
    window = run_batch(args, 0.0, window=True)
    batches = (("no limits", calm), ("storm", storm), ("storm, agents exit on 429", harsh),
               ("window", window))  # fmt: skip
    for name, r in batches:
        print(f"{name:>25}: done {r['done']}/{args.tasks}, attempts {r['attempts']}, "
              f"requests {r['requests']} ({r['limited']} got 429), wall {r['wall']:.1f}s, "
              f"tokens {r['tokens']}, turn files kept {r['turn_files']}, "
              f"done by codex {r['by_codex']}, anthropic gate: {r['cuts']} cuts, "
              f"lowest concurrency {r['min_limit']}")  # fmt: skip
    print(f"storm/no-limit: wall {storm['wall'] / calm['wall']:.2f}x (target <= 2x), "
          f"tokens {storm['tokens'] / calm['tokens']:.3f}x (target <= 1.1x), "
          f"completion {storm['done']}/{args.tasks} (target all)")  # fmt: skip
    print(f"storm with agents that exit on every 429/no-limit: wall "
          f"{harsh['wall'] / calm['wall']:.2f}x, tokens {harsh['tokens'] / calm['tokens']:.3f}x, "
          f"completion {harsh['done']}/{args.tasks}")  # fmt: skip
    print(f"window/no-limit: wall {window['wall'] / calm['wall']:.2f}x, "
          f"done by the fallback {window['by_codex']}/{args.tasks} (target all)")  # fmt: skip
    ok = calm["done"] == storm["done"] == harsh["done"] == window["by_codex"] == args.tasks
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
