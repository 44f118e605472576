"""Rate-limit storm with the real Claude Code CLI against the local Anthropic stub.

    PYTHONPATH=. python benchmarks/bench_ratelimit_claude.py [--tasks 24] [--jobs 6] [--turns 3]

The stub (tests/anthropic_stub.py, a real HTTP server on 127.0.0.1) plays the model: each task's
conversation writes one file per turn with the `Write` tool, then says it is done. In the storm
the stub answers 429 (`rate_limit_error`, `retry-after: 0`) to a seeded share of the agent's
requests; Claude Code retries those itself (`CLAUDE_CODE_MAX_RETRIES`, default 10) and reports
each retry as a stream-json `api_retry` event, which swarm's gate reads while the agent runs.
The same batch runs without limits as the baseline. Needs `claude` on PATH (or `--claude`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.anthropic_stub import (
    Recorded,
    Reply,
    Text,
    ToolUse,
    claude_env,
    rate_limited,
    serve,
    without_claude_vars,
)

_TASK_RE = re.compile(r"bench task (\d+)")


def run_batch(args: argparse.Namespace, fraction: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="swarm-claude-storm-") as tmp, serve() as stub:
        base = Path(tmp)
        repo = base / "repo"
        repo.mkdir()
        (repo / "README.md").write_text("storm\n")
        ident = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
        subprocess.run(["git", *ident, "commit", "-qm", "init"], cwd=repo, check=True)
        worktrees = base / "repo.swarm"

        def policy(request: Recorded) -> Reply | None:
            found = _TASK_RE.search(" ".join(request.user_texts()))
            if found is None:
                return None
            if fraction and stub._rng.random() < fraction:  # noqa: SLF001 - the stub's seeded rng
                return rate_limited()
            task = f"t{int(found[1]):02d}"
            done = len(request.tool_results())
            if done < args.turns:
                path = worktrees / task / f"turn-{done + 1}.txt"
                content = f"{task} turn {done + 1}\n"
                return ToolUse(name="Write", input={"file_path": str(path), "content": content})
            return Text(text="Done.")

        with stub.lock:
            stub.policy = policy
            stub.seed = args.seed
            stub._rng.seed(args.seed)  # noqa: SLF001
        tasks = "".join(
            f'[[task]]\nid = "t{i:02d}"\nprompt = "bench task {i}: write the turn files"\n'
            for i in range(args.tasks)
        )
        (base / "tasks.toml").write_text(
            f'[defaults]\nagent = "claude"\njobs = {args.jobs}\nretries = 20\n'
            f'rate_limit_backoff = "{args.backoff}s"\n{tasks}'
        )
        env = without_claude_vars(dict(os.environ)) | claude_env(stub, max_retries=10)
        env["PATH"] = f"{Path(args.claude).parent}{os.pathsep}{env['PATH']}"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", "run", str(base / "tasks.toml")],
            cwd=repo, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - start
        with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
            done = db.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0]
            attempts = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
            tokens = db.execute("SELECT sum(tokens_in) + sum(tokens_out) FROM attempts").fetchone()
            limits = [
                json.loads(row[0])["limit"]
                for row in db.execute("SELECT data FROM events WHERE kind = 'gate'")
            ]
        agent = stub.agent_requests()
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:])
    return {
        "done": done,
        "attempts": attempts,
        "wall": wall,
        "tokens": tokens[0] or 0,
        "requests": len(agent),
        "limited": sum(r.reply == "error:429" for r in agent),
        "cuts": sum(b < a for a, b in itertools.pairwise(limits)),
        "lowest": min(limits, default=args.jobs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--backoff", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--claude", default=shutil.which("claude"))
    args = parser.parse_args()
    if not args.claude:
        print("Claude Code CLI not found: install it or pass --claude PATH", file=sys.stderr)
        return 2
    version = subprocess.run(
        [args.claude, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"machine: {platform.system()} {platform.release()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(f"claude {version}")
    print(f"tasks {args.tasks}, jobs {args.jobs}, turns/task {args.turns}, "
          f"429 fraction {args.fraction}")  # fmt: skip
    calm = run_batch(args, 0.0)
    storm = run_batch(args, args.fraction)
    for name, r in (("no limits", calm), ("storm", storm)):
        print(f"{name:>9}: done {r['done']}/{args.tasks}, attempts {r['attempts']}, "
              f"agent requests {r['requests']} ({r['limited']} got 429), wall {r['wall']:.1f}s, "
              f"tokens {r['tokens']}, gate: {r['cuts']} cuts, lowest concurrency "
              f"{r['lowest']}")  # fmt: skip
    print(f"storm/no-limit: wall {storm['wall'] / calm['wall']:.2f}x (target <= 2x), "
          f"tokens {storm['tokens'] / max(1, calm['tokens']):.3f}x (target <= 1.1x), "
          f"completion {storm['done']}/{args.tasks} (target all)")  # fmt: skip
    return 0 if storm["done"] == calm["done"] == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
