"""Rate-limit storm: 24 tasks, --jobs 6, an API stub that answers 429 to 30% of requests.

    python benchmarks/bench_ratelimit.py [--tasks 24] [--jobs 6] [--fraction 0.3] [--turns 6]

Each fake agent is a small program that works like a coding agent against a Messages-style API:
it makes one request per turn to a local stub server (127.0.0.1), sending its whole
conversation so far (input tokens grow per turn), writes a file per turn into its worktree, and
on a 429 exits with Claude Code's JSON result (`is_error: true`, `api_error_status: 429`, its
`session_id`). Resumed with `--resume <session>`, it continues from the turn it reached; the
context grows by the resume message each time a session is resumed, which is what a rate limit
costs in tokens (a request answered 429 was not processed, so it costs none).
The same batch runs twice in this process: with the storm and without any 429, and the
benchmark prints completion, attempts, wall time and tokens of both.
"""

from __future__ import annotations

import argparse
import http.server
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

FAKE_CLAUDE = r"""#!PYTHON
import json, os, pathlib, sys, urllib.error, urllib.request
args = sys.argv[1:]
task = os.environ["SWARM_TASK_ID"]
session = args[args.index("--resume") + 1] if "--resume" in args else f"s-{task}"
state = pathlib.Path(os.environ["BENCH_STATE"]) / f"{session}.json"
saved = json.loads(state.read_text()) if state.exists() else {"turn": 0, "resumes": 0}
turn, resumes = saved["turn"], saved["resumes"] + ("--resume" in args)
turns, url = int(os.environ["BENCH_TURNS"]), os.environ["BENCH_URL"]
spent_in = spent_out = 0
def finish(error=False):
    out = {"type": "result", "subtype": "success", "is_error": error, "session_id": session,
           "num_turns": turn, "total_cost_usd": (spent_in * 3 + spent_out * 15) / 1e6,
           "usage": {"input_tokens": spent_in, "output_tokens": spent_out,
                     "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}
    if error:
        out["api_error_status"] = 429
        out["result"] = "API Error: 429 rate_limit_error"
    print(json.dumps(out), flush=True)
    sys.exit(1 if error else 0)
while turn < turns:
    # The conversation so far, resent every request; each resume leaves its "continue" message
    # (and the model's reply to it) in the conversation: that is what a rate limit costs.
    context = 2000 + 800 * turn + 150 * resumes
    req = urllib.request.Request(url, data=json.dumps({"input_tokens": context}).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 429:
            finish(error=True)
        raise
    spent_in += body["usage"]["input_tokens"]
    spent_out += body["usage"]["output_tokens"]
    turn += 1
    pathlib.Path(f"turn-{turn}.txt").write_text(f"{task} turn {turn}\n")
    state.write_text(json.dumps({"turn": turn, "resumes": resumes}))
finish()
"""


class Stub(http.server.ThreadingHTTPServer):
    """Answers like a model: fixed latency, usage echoed, 429 for a seeded fraction."""

    daemon_threads = True

    def __init__(self, fraction: float, latency: float, seed: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
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
        with self.server.lock:
            self.server.requests += 1
            limited = self.server.rng.random() < self.server.fraction
            self.server.limited += limited
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


def run_batch(args: argparse.Namespace, fraction: float) -> dict[str, float]:
    stub = Stub(fraction, args.latency, args.seed)
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
            exe = bin_dir / "claude"
            exe.write_text(FAKE_CLAUDE.replace("PYTHON", sys.executable))
            exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
            tasks = "".join(
                f'[[task]]\nid = "t{i:02d}"\nprompt = "task {i}"\n' for i in range(args.tasks)
            )
            (base / "tasks.toml").write_text(
                f'[defaults]\nagent = "claude"\njobs = {args.jobs}\nretries = 20\n'
                f'rate_limit_backoff = "{args.backoff}s"\n{tasks}'
            )
            env = {
                **os.environ,
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
            with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
                done = db.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0]
                attempts = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
                tokens = db.execute(
                    "SELECT sum(tokens_in) + sum(tokens_out) FROM attempts"
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
    args = parser.parse_args()
    print(f"machine: {platform.system()} {platform.release()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(f"tasks {args.tasks}, jobs {args.jobs}, turns/task {args.turns}, "
          f"429 fraction {args.fraction}, backoff base {args.backoff}s")  # fmt: skip
    calm = run_batch(args, 0.0)
    storm = run_batch(args, args.fraction)
    for name, r in (("no limits", calm), ("storm", storm)):
        print(f"{name:>9}: done {r['done']}/{args.tasks}, attempts {r['attempts']}, "
              f"requests {r['requests']} ({r['limited']} got 429), wall {r['wall']:.1f}s, "
              f"tokens {r['tokens']}, turn files kept {r['turn_files']}")  # fmt: skip
    print(f"storm/no-limit: wall {storm['wall'] / calm['wall']:.2f}x, "
          f"tokens {storm['tokens'] / calm['tokens']:.3f}x (target <= 1.2x), "
          f"completion {storm['done']}/{args.tasks} (target all)")  # fmt: skip
    return 0 if storm["done"] == args.tasks and calm["done"] == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
