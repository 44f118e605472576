"""Helpers of the end-to-end tests that run `swarm run` with a real agent CLI and a local stub.

The CLIs are found on PATH, else where .ci/run installs them (npm under .cache/npm, aider in
its own virtual environment under .cache/aider-venv); a test module skips when its CLI is
missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL_BIN = {
    "codex": ROOT / ".cache" / "npm" / "node_modules" / ".bin" / "codex",
    "gemini": ROOT / ".cache" / "npm" / "node_modules" / ".bin" / "gemini",
    "aider": ROOT / ".cache" / "aider-venv" / "bin" / "aider",
}
# Variables of a developer's shell that could send a CLI to a real account instead of the stub.
_PROVIDER_PREFIXES = (
    "OPENAI_",
    "AZURE_",
    "CODEX_",
    "GEMINI_",
    "GOOGLE_",
    "VERTEX",
    "AIDER_",
    "ANTHROPIC_",
    "CLAUDE",
)


def find_cli(name: str) -> str | None:
    """The program *name*: the one .ci/run installed, else on PATH, else None."""
    local = LOCAL_BIN[name]
    if local.exists():
        return str(local)
    return shutil.which(name)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus provider credentials and settings, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROVIDER_PREFIXES)}
    return env | extra


def with_program(env: dict[str, str], program: str) -> dict[str, str]:
    """*env* with *program*'s directory first on PATH (the profiles run it by name)."""
    return env | {"PATH": f"{Path(program).parent}{os.pathsep}{env.get('PATH', '')}"}


def write_manifest(repo: Path, text: str) -> Path:
    """The manifest *text* saved beside *repo*."""
    path = repo.parent / "tasks.toml"
    path.write_text(text)
    return path


def agent_manifest(agent: str, tasks: str, **defaults: object) -> str:
    """A manifest of *tasks* whose ``[defaults]`` name *agent* and set *defaults*."""
    head = f'[defaults]\nagent = "{agent}"\n' + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in defaults.items()
    )
    return head + tasks


def swarm(
    repo: Path, env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``swarm ARGS`` in *repo* with *env*."""
    return subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRow:
    """One attempt as the store recorded it."""

    number: int
    outcome: str | None
    session_id: str | None
    reason: str
    cost_usd: float | None
    tokens_in: int | None
    tokens_out: int | None
    cache_read_tokens: int | None
    log_path: str


def attempts(repo: Path) -> list[AttemptRow]:
    """Every attempt of the latest run, in order."""
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        rows = db.execute(
            "SELECT number, outcome, session_id, reason, cost_usd, tokens_in, tokens_out,"
            " cache_read_tokens, log_path FROM attempts ORDER BY id"
        ).fetchall()
    return [
        AttemptRow(
            number=r[0],
            outcome=r[1],
            session_id=r[2],
            reason=r[3],
            cost_usd=r[4],
            tokens_in=r[5],
            tokens_out=r[6],
            cache_read_tokens=r[7],
            log_path=r[8],
        )
        for r in rows
    ]


def task_states(repo: Path) -> dict[str, tuple[str, str]]:
    """Each task's (state, reason)."""
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        return {
            t: (s, r or "") for t, s, r in db.execute("SELECT task_id, state, reason FROM tasks")
        }


def wait_for_state_event(repo: Path, state: str, *, deadline: float = 90) -> str:
    """Poll the store until a task emitted a ``state`` event *state*; return its reason."""
    db_path = repo / ".git" / "swarm" / "state.db"
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        rows = []
        if db_path.exists():
            # The file exists before its tables do, and the manager may hold a write lock.
            with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(db_path) as db:
                rows = db.execute(
                    "SELECT json_extract(data, '$.reason') FROM events WHERE kind = 'state'"
                    " AND json_extract(data, '$.state') = ?",
                    (state,),
                ).fetchall()
        if rows:
            return str(rows[-1][0] or "")
        time.sleep(0.1)
    msg = f"no task reached {state!r} within {deadline}s"
    raise AssertionError(msg)


def reason_when(repo: Path, env: dict[str, str], manifest: Path, state: str) -> tuple[str, float]:
    """Start ``swarm run MANIFEST``, stop it (Ctrl-C) once a task emitted *state*.

    Returns that event's reason and the time it was seen (epoch seconds).
    """
    manager = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", str(manifest)],
        cwd=repo, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        return wait_for_state_event(repo, state), time.time()
    finally:
        manager.send_signal(signal.SIGINT)
        manager.wait(timeout=60)


def committed_files(repo: Path, branch: str) -> list[str]:
    """Every path on *branch*."""
    out = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", branch],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.split()
