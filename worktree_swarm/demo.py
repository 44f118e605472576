"""`swarm demo`: the main job end to end in a throwaway repository, no API key needed."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.config.manifest import build_run_spec
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.paths import store_path
from worktree_swarm.core.text import Echo
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner
from worktree_swarm.infra.lock import ManagerLock
from worktree_swarm.infra.store import Store
from worktree_swarm.report.status import task_status
from worktree_swarm.run.runner import Runner
from worktree_swarm.ui.live import PlainObserver
from worktree_swarm.ui.tables import Column, render, table

MANIFEST = """\
# A small batch for the bundled scripted agent (see worktree_swarm/agents/scripted.py).
[defaults]
agent = "scripted"
checks = [["{python}", "-m", "compileall", "-q", "."]]

[[task]]
id = "greeting"
title = "Add a greeting module"
prompt = '''
Add greet.py with a hello() function.
sleep 0.6
write greet.py: def hello(name): return f"hello, {name}"
'''

[[task]]
id = "farewell"
title = "Add a farewell module"
prompt = '''
sleep 0.4
write farewell.py: def bye(name): return f"bye, {name}"
'''

[[task]]
id = "greeting-tests"
depends_on = ["greeting"]
prompt = '''
Test the greeting (this task starts from greeting's branch, so greet.py is there).
write test_greet.py: import sys; sys.path.insert(0, "")
append test_greet.py: from greet import hello; hello("a") == "hello, a" or sys.exit("wrong")
'''
checks = [["{python}", "test_greet.py"]]

[[task]]
id = "docs"
depends_on = ["greeting", "farewell"]
prompt = '''
Document both modules (starts from a merge of its two dependencies).
append README.md: Use greet.hello() and farewell.bye().
'''
"""


_COLUMNS = (
    Column(header="task"),
    Column(header="state", states=True),
    Column(header="diff"),
    Column(header="branch"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoResult:
    """What the demo did."""

    ok: bool
    repo: Path
    states: dict[str, TaskState]


def run_demo(*, jobs: int = 2, keep: bool = False, echo: Echo = print) -> DemoResult:
    """Make a throwaway repository, run four dependent tasks, show the outcome, clean up."""
    base = Path(tempfile.mkdtemp(prefix="swarm-demo-"))
    root = base / "project"
    try:
        _make_repo(root)
        manifest = root / "tasks.toml"
        manifest.write_text(MANIFEST.replace("{python}", _toml_path(sys.executable)))
        repo = git.open_repo(root)
        spec = build_run_spec(repo_root=repo.root, manifest=manifest)
        echo(f"demo repository: {root} (4 tasks, --jobs {jobs})")
        spec = dataclasses.replace(spec, jobs=jobs)
        with ManagerLock(repo.state_dir) as lock, Store(store_path(repo)) as store:
            lock.acquire()
            runner = Runner.create(repo=repo, spec=spec, store=store, observer=PlainObserver())
            states = runner.execute()
            rows = [
                [
                    r.task_id,
                    r.state,
                    f"+{r.insertions} -{r.deletions}" if r.files_changed else "",
                    r.branch,
                ]
                for r in task_status(store, runner.run_id)
            ]
            echo(render(table(_COLUMNS, rows)))
        log = git.git(root, "log", "--oneline", "--graph", "--all", "--decorate")
        echo("branches made by the agents (your checkout stayed on main, untouched):")
        echo(log)
        ok = all(state is TaskState.DONE for state in states.values())
        return DemoResult(ok=ok, repo=root, states=states)
    finally:
        if keep:
            echo(f"kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _make_repo(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "README.md").write_text("# demo project\n")
    (root / ".gitignore").write_text("__pycache__/\n")
    ident = ["-c", "user.name=swarm demo", "-c", "user.email=demo@localhost"]
    runner.run(root, "init", "-q", "-b", "main")
    runner.run(root, "add", "-A")
    runner.run(root, *ident, "commit", "-q", "-m", "initial")


def _toml_path(path: str) -> str:
    return path.replace("\\", "\\\\").replace('"', '\\"')
