"""Guard rails: agents that write outside their worktree are caught and their writes undone.

Real runs of the real CLI with fake agents that misbehave: writing into the main checkout,
into a sibling's worktree, switching their worktree to main and committing there, and
committing onto another task's branch. Each is caught, its task marked failed, the foreign
changes saved as a patch, and the user's checkout (with the user's own uncommitted edits)
restored byte for byte.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import as_owner_only, git, make_repo
from tests.test_run import argv_toml, manifest, status_json, swarm, swarm_bg, wait_for
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard.model import MAIN
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of

AgentFactory = Callable[[str], list[str]]


def tree_bytes(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under *root* except .git: its bytes and permission bits."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(dirpath) / name
            found[path.relative_to(root).as_posix()] = (
                path.read_bytes(),
                stat.S_IMODE(path.lstat().st_mode),
            )
    return found


def checkout_state(repo: Path) -> dict[str, object]:
    """What a user would call 'my checkout': files, staged entries, HEAD and branch tips."""
    return {
        "files": tree_bytes(repo),
        "staged": git(repo, "diff", "--cached", "--binary"),
        "index": git(repo, "ls-files", "--stage"),
        "head": git(repo, "symbolic-ref", "HEAD"),
        "commit": git(repo, "rev-parse", "HEAD"),
        "branches": [
            line
            for line in git(
                repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads"
            ).splitlines()
            if not line.startswith("refs/heads/swarm/")
        ],
    }


@pytest.fixture
def dirty_repo(tmp_path: Path) -> Path:
    """A repository whose user has uncommitted work: an edit, a staged file, an untracked one."""
    repo = make_repo(
        tmp_path / "repo",
        {"app.py": "print('v1')\n", "notes.txt": "clean\n", "staged.txt": "old\n"},
    )
    (repo / "app.py").write_text("print('my edit, not committed')\n")
    (repo / "staged.txt").write_text("staged by me\n")
    git(repo, "add", "staged.txt")
    (repo / "scratch.txt").write_text("my untracked notes\n")
    (repo / "tool.sh").write_text("#!/bin/sh\n")
    (repo / "tool.sh").chmod(0o755)
    return repo


def events(repo: Path, kind: str) -> list[dict[str, object]]:
    """The guard's events as `swarm report --json` lists them."""
    assert kind == "outside_write"
    out = swarm(repo, "report", "--json")
    assert out.returncode == 0, out.stderr
    writes: list[dict[str, object]] = json.loads(out.stdout)["outside_writes"]
    return writes


# The agent that writes into the user's checkout: from inside it (cwd), so that it is
# identified even while another agent runs. It waits until swarm has undone its writes.
MAIN_WRITER = """
import os, pathlib, sys, time
main = pathlib.Path(sys.argv[1])
flags = pathlib.Path(sys.argv[2])
pathlib.Path('mine.txt').write_text('own work\\n')
os.chdir(main)
pathlib.Path('app.py').write_text('print("agent was here")\\n')
pathlib.Path('notes.txt').write_text('agent notes\\n')
pathlib.Path('scratch.txt').unlink()
pathlib.Path('new').mkdir()
pathlib.Path('new/evil.txt').write_text('evil\\n')
pathlib.Path('new/blob.bin').write_bytes(bytes(range(256)) * 4)
(flags / 'wrote').write_text('1')
deadline = time.time() + 60
while time.time() < deadline and (main / 'notes.txt').read_text() != 'clean\\n':
    time.sleep(0.05)
time.sleep(30)  # swarm stops this agent; a sleep here only keeps it alive until then
"""

# An innocent agent running at the same time: waits until the other agent's writes were
# undone, then does its own work.
BYSTANDER = """
import pathlib, sys, time
main = pathlib.Path(sys.argv[1])
flags = pathlib.Path(sys.argv[2])
(flags / 'bystander-up').touch()
deadline = time.time() + 60
while time.time() < deadline and not (flags / 'wrote').exists():
    time.sleep(0.05)
watched, original = main / sys.argv[3], sys.argv[4]
while time.time() < deadline and watched.read_text() != original:
    time.sleep(0.05)
pathlib.Path('bystander.txt').write_text('fine\\n')
"""


def run_bad_and_good_together(
    repo: Path, bad: list[str], good: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run tasks "bad" and "good" at the same time."""
    path = manifest(
        repo,
        f"""
[[task]]
id = "bad"
prompt = "p"
agent = {argv_toml(bad)}

[[task]]
id = "good"
prompt = "p"
agent = {argv_toml(good)}
""",
    )
    return swarm(repo, "run", path, "--jobs", "2")


@pytest.mark.parametrize(
    "your_config",
    [
        "",
        # Colour on pipes and no a/ b/ prefixes: the patch was one `git apply` refused.
        "[color]\n\tui = always\n\tdiff = always\n[diff]\n\tnoprefix = true\n",
    ],
    ids=["", "colour-no-prefix"],
)
def test_write_into_main_checkout_is_caught_undone_and_saved(
    dirty_repo: Path, tmp_path: Path, write_agent: AgentFactory, your_config: str
) -> None:
    repo = dirty_repo
    Path(os.environ["HOME"], ".gitconfig").write_text(your_config)
    flags = tmp_path / "flags"
    flags.mkdir()
    before = checkout_state(repo)
    bad = [*write_agent(MAIN_WRITER), str(repo), str(flags)]
    good = [*write_agent(BYSTANDER), str(repo), str(flags), "notes.txt", "clean\n"]
    out = run_bad_and_good_together(repo, bad, good)
    assert out.returncode == 1, out.stderr
    rows = status_json(repo)
    assert rows["good"]["state"] == "done"
    assert rows["bad"]["state"] == "failed"
    reason = str(rows["bad"]["reason"])
    assert "wrote outside its worktree" in reason
    assert "notes.txt" in reason
    # The user's checkout is back, byte for byte, with their own uncommitted work.
    assert checkout_state(repo) == before
    # What the agent did there is not lost: it is in the patch.
    writes = events(repo, "outside_write")
    assert [w["suspects"] for w in writes] == [["bad"]]
    assert writes[0]["where"] == MAIN
    assert writes[0]["restored"] is True
    patch = Path(str(writes[0]["patch"])).read_text()
    assert "evil" in patch
    assert "agent was here" in patch
    assert "my untracked notes" in patch  # the deletion, reversible from the patch
    # A patch git applies: what the agent did there, should you want it after all.
    subprocess.run(["git", "apply", str(writes[0]["patch"])], cwd=repo, check=True)
    assert (repo / "app.py").read_text() == 'print("agent was here")\n'
    assert (repo / "notes.txt").read_text() == "agent notes\n"
    assert (repo / "new" / "evil.txt").read_text() == "evil\n"
    assert (repo / "new" / "blob.bin").read_bytes() == bytes(range(256)) * 4  # binary too
    assert not (repo / "scratch.txt").exists()
    # Its own work is still on its branch.
    assert "mine.txt" in git(repo, "ls-tree", "--name-only", "swarm/bad")
    # The report names the event, in the terminal and in the HTML page.
    text = swarm(repo, "report").stdout
    assert "outside writes (1):" in text
    files = "app.py, new/blob.bin, new/evil.txt, notes.txt, scratch.txt"
    assert f"by bad: files {files} in the main checkout" in text
    assert swarm(repo, "report", "--html", str(tmp_path / "r.html")).returncode == 0
    assert "by bad: files app.py" in (tmp_path / "r.html").read_text()


def test_the_runs_own_output_in_the_checkout_is_no_outside_write(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # `swarm run tasks.toml > swarm.log` in the repository: swarm's own lines there were taken
    # for an agent's write, failing every task, and "restored" (the log cut short).
    log = repo / "swarm.log"
    good = write_agent("import pathlib\npathlib.Path('own.txt').write_text('own\\n')\n")
    bad = write_agent(
        "import pathlib, sys\npathlib.Path(sys.argv[1], 'planted.txt').write_text('x')\n"
        "pathlib.Path('own.txt').write_text('own\\n')\n"
    )

    def run_into_log(task: str, agent: list[str], mode: str) -> int:
        path = manifest(
            repo, f'[[task]]\nid = "{task}"\nprompt = "p"\nagent = {argv_toml(agent)}\n'
        )
        with log.open(mode) as out:
            return subprocess.run(
                [sys.executable, "-m", "worktree_swarm.cli", "run", path],
                cwd=repo, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                check=False,
            ).returncode  # fmt: skip

    assert run_into_log("good", good, "w") == 0, log.read_text()
    assert status_json(repo)["good"]["state"] == "done"
    assert log.read_text().splitlines()[-1].endswith(": 1 done")  # the summary, to the end
    assert "uncommitted changes" not in log.read_text()  # the log is no change of the user's
    # The log's file is left out, not the checkout: another file written there is caught.
    assert run_into_log("bad", [*bad, str(repo)], "a") == 1
    reason = str(status_json(repo)["bad"]["reason"])
    assert "files planted.txt in the main checkout" in reason, reason
    assert not (repo / "planted.txt").exists()
    assert log.read_text().splitlines()[-1].endswith(": 1 failed")


def run_victim_then_bad(
    repo: Path, victim: list[str], bad: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run task "victim", then (once it has ended) task "bad"."""
    return swarm(repo, "run", one_after_another(repo, [("victim", victim), ("bad", bad)]))


def one_after_another(repo: Path, tasks: list[tuple[str, list[str]]]) -> Path:
    """A manifest of *tasks* (id, agent), each depending on the one before."""
    body, before = "", None
    for task_id, agent in tasks:
        after = f"depends_on = [{json.dumps(before)}]\n" if before else ""
        body += f'[[task]]\nid = "{task_id}"\nprompt = "p"\n{after}agent = {argv_toml(agent)}\n\n'
        before = task_id
    return manifest(repo, body)


SIBLING_WRITER = """
import os, pathlib
victim = pathlib.Path(os.environ['SWARM_WORKTREE']).parent / 'victim'
(victim / 'victim.txt').write_text('overwritten by another agent\\n')
(victim / 'planted.txt').write_text('planted\\n')
pathlib.Path('own.txt').write_text('own\\n')
"""


def test_write_into_a_sibling_worktree_is_caught_and_undone(
    repo: Path, write_agent: AgentFactory
) -> None:
    victim = write_agent(
        "import pathlib\npathlib.Path('victim.txt').write_text('victim work\\n')\n"
    )
    bad = write_agent(SIBLING_WRITER)
    out = run_victim_then_bad(repo, victim, bad)
    assert out.returncode == 1, out.stderr
    rows = status_json(repo)
    assert rows["victim"]["state"] == "done"
    assert rows["bad"]["state"] == "failed"
    assert "victim.txt" in str(rows["bad"]["reason"])
    wt = repo.parent / "repo.swarm" / "victim"
    assert (wt / "victim.txt").read_text() == "victim work\n"
    assert not (wt / "planted.txt").exists()
    assert git(wt, "status", "--porcelain") == ""
    writes = events(repo, "outside_write")
    assert [(w["where"], w["suspects"]) for w in writes] == [("victim", ["bad"])]
    assert "planted" in Path(str(writes[0]["patch"])).read_text()


CHECKOUT_MAIN = """
import pathlib, subprocess
subprocess.run(['git', 'checkout', '-q', 'main'], check=True)
pathlib.Path('README.md').write_text('changed on main by an agent\\n')
subprocess.run(['git', 'commit', '-qam', 'agent commit on main'], check=True)
"""


def test_git_checkout_main_and_commit_there_is_caught_and_main_restored(
    repo: Path, write_agent: AgentFactory
) -> None:
    # The user works on a feature branch, so `main` is free to be checked out elsewhere.
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "feature.txt").write_text("feature\n")
    git(repo, "add", "feature.txt")
    git(repo, "commit", "-qm", "feature work")
    before = checkout_state(repo)
    main_tip = git(repo, "rev-parse", "main")
    out = swarm(repo, "run", "--agent", " ".join(write_agent(CHECKOUT_MAIN)), "-t", "bad=p")
    assert out.returncode == 1, out.stderr
    rows = status_json(repo)
    assert rows["bad"]["state"] == "failed"
    assert "switched its worktree from swarm/bad to main" in str(rows["bad"]["reason"])
    assert git(repo, "rev-parse", "main") == main_tip
    assert checkout_state(repo) == before
    wt = repo.parent / "repo.swarm" / "bad"
    assert git(wt, "symbolic-ref", "HEAD") == "refs/heads/swarm/bad"
    writes = events(repo, "outside_write")
    moved = [r["ref"] for w in writes for r in w["refs"]]  # type: ignore[attr-defined]
    assert moved == ["refs/heads/main"]
    main_patch = next(w["patch"] for w in writes if w["refs"])
    assert "agent commit on main" in Path(str(main_patch)).read_text()


ORPHAN_CHECKOUT = """
import pathlib, subprocess
subprocess.run(['git', 'checkout', '-q', '--orphan', 'x'], check=True)
pathlib.Path('orphan.txt').write_text('work on a branch of no commit\\n')
"""


def test_git_checkout_orphan_is_put_back_on_the_task_branch_with_the_work(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A branch of no commit yet is no deleted task branch: none is made for it, and the work
    # lands on the task's branch, on top of where it was.
    base = git(repo, "rev-parse", "HEAD")
    out = swarm(repo, "run", "--agent", " ".join(write_agent(ORPHAN_CHECKOUT)), "-t", "o=p")
    assert out.returncode == 1, out.stderr
    row = status_json(repo)["o"]
    assert row["state"] == "failed"
    assert "switched its worktree from swarm/o to x; restored" in str(row["reason"])
    wt = repo.parent / "repo.swarm" / "o"
    assert git(wt, "symbolic-ref", "HEAD") == "refs/heads/swarm/o"
    assert git(repo, "rev-parse", "swarm/o^") == base
    assert git(repo, "show", "swarm/o:orphan.txt") == "work on a branch of no commit"
    heads = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/")
    assert heads.splitlines() == ["main", "swarm/o"]


COMMIT_ONTO_SIBLING = """
import os, subprocess
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout.strip()
tip = git('rev-parse', 'swarm/victim')
tree = git('rev-parse', 'HEAD^{tree}')
commit = git('commit-tree', tree, '-p', tip, '-m', 'sneaked onto victim')
git('update-ref', 'refs/heads/swarm/victim', commit, tip)
open('own.txt', 'w').write('own\\n')
"""


def test_commit_onto_another_tasks_branch_is_caught_and_undone(
    repo: Path, write_agent: AgentFactory
) -> None:
    victim = write_agent("import pathlib\npathlib.Path('victim.txt').write_text('v\\n')\n")
    bad = write_agent(COMMIT_ONTO_SIBLING)
    out = run_victim_then_bad(repo, victim, bad)
    assert out.returncode == 1, out.stderr
    rows = status_json(repo)
    assert rows["victim"]["state"] == "done"
    assert rows["bad"]["state"] == "failed"
    assert "swarm/victim moved" in str(rows["bad"]["reason"])
    log = git(repo, "log", "--format=%s", "swarm/victim")
    assert "sneaked onto victim" not in log
    writes = events(repo, "outside_write")
    assert writes[0]["suspects"] == ["bad"]
    assert "sneaked onto victim" in Path(str(writes[0]["patch"])).read_text()


def test_allow_outside_writes_reports_but_neither_fails_nor_restores(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = write_agent(
        "import os, pathlib, sys\n"
        "pathlib.Path('own.txt').write_text('own\\n')\n"
        "pathlib.Path(sys.argv[1], 'README.md').write_text('agent edit\\n')\n"
    )
    out = swarm(
        repo, "run", "--allow-outside-writes", "--agent", " ".join([*agent, str(repo)]), "-t", "t=p"
    )
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["t"]["state"] == "done"
    assert (repo / "README.md").read_text() == "agent edit\n"
    writes = events(repo, "outside_write")
    assert [(w["where"], w["restored"], w["paths"]) for w in writes] == [
        (MAIN, False, ["README.md"])
    ]


def test_allow_outside_writes_records_a_planted_hook_once_and_keeps_it(
    repo: Path, write_agent: AgentFactory
) -> None:
    # The guard's scan of git's own files stopped on it (an internal error) and the task with it.
    agent = write_agent(
        "import pathlib, subprocess\n"
        "common = subprocess.run(['git', 'rev-parse', '--git-common-dir'], capture_output=True,\n"
        "                        text=True, check=True).stdout.strip()\n"
        "pathlib.Path(common, 'hooks', 'post-checkout').write_text('#!/bin/sh\\n')\n"
        "pathlib.Path('own.txt').write_text('own\\n')\n"
    )
    out = swarm(repo, "run", "--allow-outside-writes", "--agent", " ".join(agent), "-t", "t=p")
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["t"]["state"] == "done"
    assert (repo / ".git" / "hooks" / "post-checkout").read_text() == "#!/bin/sh\n"
    writes = events(repo, "outside_write")
    assert [(w["git_files"], w["suspects"], w["restored"]) for w in writes] == [
        (["hooks/post-checkout"], ["t"], False)
    ]


def test_agents_get_a_git_environment_of_their_own(
    repo: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (Path(os.environ["HOME"]) / ".gitconfig").write_text(
        "[user]\n\temail = me@example.com\n[alias]\n\tco = checkout\n"
    )
    # A GIT_DIR in the manager's environment must not reach the agent.
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    agent = write_agent(
        "import json, os, pathlib, subprocess\n"
        "def cfg(*a):\n"
        "    r = subprocess.run(['git', 'config', *a], capture_output=True, text=True)\n"
        "    return r.stdout.strip()\n"
        "pathlib.Path('env.json').write_text(json.dumps({\n"
        "    'git_dir': os.environ.get('GIT_DIR'),\n"
        "    'email': cfg('--global', 'user.email'),\n"
        "    'alias': cfg('--global', 'alias.co'),\n"
        "    'top': subprocess.run(['git', 'rev-parse', '--show-toplevel'],\n"
        "        capture_output=True, text=True).stdout.strip(),\n"
        "}))\n"
    )
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=p")
    assert out.returncode == 0, out.stderr
    seen = json.loads(git(repo, "show", "swarm/t:env.json"))
    assert seen["git_dir"] is None
    assert seen["email"] == "me@example.com"  # the user's identity carries over
    assert seen["alias"] == ""  # the rest of ~/.gitconfig does not
    assert seen["top"] == str(repo.parent / "repo.swarm" / "t")


def test_an_agents_git_outside_its_worktree_finds_no_repository_not_even_one_around_yours(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Your repository inside another one (a dotfiles repository in your home, a superproject):
    # the worktree root beside it lies in that one's working tree too.
    outer = make_repo(tmp_path / "home")
    outer_head = git(outer, "rev-parse", "HEAD")
    repo = make_repo(outer / "repo")
    agent = write_agent(
        "import json, os, pathlib, subprocess\n"
        "root = pathlib.Path(os.environ['SWARM_WORKTREE']).parent\n"
        "def git(cwd, *a):\n"
        "    return subprocess.run(['git', *a], cwd=cwd, capture_output=True, text=True)\n"
        "found = {str(d): git(d, 'rev-parse', '--show-toplevel').returncode\n"
        "         for d in (root, pathlib.Path(os.environ['SWARM_WORKTREE']))}\n"
        "found['commit'] = git(root, 'commit', '--allow-empty', '-m', 'mine').returncode\n"
        "pathlib.Path('found.json').write_text(json.dumps(found))\n"
    )
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "t=p")
    assert out.returncode == 0, out.stderr
    found = json.loads(git(repo, "show", "swarm/t:found.json"))
    root = repo.parent / "repo.swarm"
    assert found[str(root / "t")] == 0  # its own worktree it reaches
    assert found[str(root)] != 0  # in the worktree root, no repository at all
    assert found["commit"] != 0
    assert git(outer, "rev-parse", "HEAD") == outer_head


def test_guard_takes_a_users_own_edit_as_the_new_baseline(dirty_repo: Path) -> None:
    guard = Guard(open_repo(dirty_repo), work_dir=dirty_repo.parent / "g", restore=True)
    guard.start()
    (dirty_repo / "app.py").write_text("the user keeps working\n")
    assert guard.scan() == []  # no agent ran: not ours to undo
    assert (dirty_repo / "app.py").read_text() == "the user keeps working\n"


def test_a_repository_you_make_in_your_checkout_while_no_agent_runs_stays_yours(
    dirty_repo: Path,
) -> None:
    (dirty_repo / "vendor" / "lib").mkdir(parents=True)
    (dirty_repo / "vendor" / "lib" / "x.txt").write_text("yours\n")
    guard = Guard(open_repo(dirty_repo), work_dir=dirty_repo.parent / "g", restore=True)
    guard.start()
    git(dirty_repo, "init", "-q", "vendor/lib")  # in a directory the guard knew
    assert guard.scan() == []  # no agent ran: yours, kept
    assert (dirty_repo / "vendor" / "lib" / ".git").is_dir()
    guard.agent_started("later", identity_of(os.getpid()))
    (dirty_repo / "app.py").write_text("an agent's write\n")
    found = guard.scan()  # an agent's write later: that one is undone, your repository kept
    assert [v.paths for v in found] == [("app.py",)]
    assert (dirty_repo / "vendor" / "lib" / ".git").is_dir()


def inotify_fds() -> set[str]:
    """This process's open inotify instances (their descriptors)."""
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed meanwhile
            if str(fd.readlink()) == "anon_inode:inotify":
                found.add(fd.name)
    return found


def test_a_guard_standing_down_after_its_start_keeps_no_inotify_instance(repo: Path) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc")
    gc.collect()  # instances of earlier tests' guards left for the collector: closed now
    before = inotify_fds()
    guard = Guard(open_repo(repo), work_dir=repo.parent / "g", restore=True)
    guard.start()
    assert inotify_fds() - before  # its watches on
    guard.stand_down()
    assert inotify_fds() <= before


def test_guard_restores_modes_symlinks_and_binary_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"bin.dat": "x"})
    (repo / "bin.dat").write_bytes(bytes(range(256)))
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o750)
    (repo / "link").symlink_to("bin.dat")
    (repo / "gone.txt").write_text("untracked, mine\n")
    (repo / "gone.txt").chmod(0o644)
    before = checkout_state(repo)
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    guard.agent_started("rogue", identity_of(os.getpid()))
    (repo / "bin.dat").write_bytes(b"\0garbage")
    (repo / "run.sh").write_text("rm -rf /\n")  # rewritten: keeps its unusual mode
    (repo / "gone.txt").unlink()  # deleted: back with the umask's mode, as git would
    (repo / "link").unlink()
    (repo / "link").symlink_to("elsewhere")
    (repo / "deep" / "er").mkdir(parents=True)
    (repo / "deep" / "er" / "f").write_text("new")
    found = guard.scan()
    assert [(v.where, v.suspects, v.restored) for v in found] == [(MAIN, ("rogue",), True)]
    assert checkout_state(repo) == before
    assert not (repo / "deep").exists()


def test_guard_detects_a_staged_change_and_a_moved_head(dirty_repo: Path, tmp_path: Path) -> None:
    before = checkout_state(dirty_repo)
    guard = Guard(open_repo(dirty_repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    guard.agent_started("rogue", identity_of(os.getpid()))
    git(dirty_repo, "add", "app.py")
    git(dirty_repo, "checkout", "-q", "--detach")
    found = guard.scan()
    assert len(found) == 1
    assert found[0].index_changed
    assert "HEAD moved from main to detached" in found[0].head
    assert checkout_state(dirty_repo) == before


# Writes into the user's checkout by absolute path, from its own worktree (once the bystander
# runs too): nothing but time links the write to it.
BY_PATH_WRITER = """
import pathlib, sys, time
main = pathlib.Path(sys.argv[1])
flags = pathlib.Path(sys.argv[2])
deadline = time.time() + 60
while time.time() < deadline and not (flags / 'bystander-up').exists():
    time.sleep(0.05)
(main / 'README.md').write_text('written by path\\n')
(flags / 'wrote').write_text('1')
while time.time() < deadline and (main / 'README.md').read_text() != 'hello\\n':
    time.sleep(0.05)
pathlib.Path('own.txt').write_text('own\\n')
"""


def test_write_no_agent_can_be_singled_out_for_fails_every_agent_running_then(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    bad = [*write_agent(BY_PATH_WRITER), str(repo), str(flags)]
    good = [*write_agent(BYSTANDER), str(repo), str(flags), "README.md", "hello\n"]
    out = run_bad_and_good_together(repo, bad, good)
    assert out.returncode == 1, out.stderr
    rows = status_json(repo)
    assert (rows["bad"]["state"], rows["good"]["state"]) == ("failed", "failed")
    assert "or one of good, running at the same time" in str(rows["bad"]["reason"])
    assert "or one of bad, running at the same time" in str(rows["good"]["reason"])
    assert (repo / "README.md").read_text() == "hello\n"
    assert [w["suspects"] for w in events(repo, "outside_write")] == [["bad", "good"]]


def test_a_resumed_runs_guard_saves_its_patches_beside_the_killed_ones_not_over_them(
    repo: Path, tmp_path: Path
) -> None:
    # A resumed run's guard works in the killed manager's guard dir: it numbered its patches
    # from 1 again, and its first one overwrote the evidence an earlier event points at.
    found = []
    for text in ("first agent's write\n", "second agent's write\n"):
        guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
        guard.start()
        guard.agent_started("rogue", identity_of(os.getpid()))
        (repo / "f.txt").write_text(text)
        [violation] = guard.scan()
        found.append(violation)
    first, second = found
    assert second.number > first.number
    assert first.patch != second.patch
    assert "first agent's write" in Path(first.patch).read_text()
    assert "second agent's write" in Path(second.patch).read_text()


# An agent that opens the git dir and its own worktree to every local user (another user could
# then plant a `core.fsmonitor` in `.git/config`) and leaves setuid and setgid programs there.
SHARES_THE_GIT_DIR = """
import os, pathlib, subprocess
g = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True,
).stdout.strip())
for d in (g, g / 'objects', g / 'logs', g / 'refs' / 'heads', os.environ['SWARM_WORKTREE']):
    os.chmod(d, 0o777)
for path, bits in ((g / 'logs' / '.cache-sh', 0o4755), (g / 'objects' / 'ab' / 'x', 0o2755)):
    path.parent.mkdir(exist_ok=True)
    path.write_text('#!/bin/sh\\n')
    path.chmod(bits)
pathlib.Path('own.txt').write_text('own\\n')
"""


def test_a_git_dir_opened_to_others_and_a_setuid_file_in_it_are_put_back(
    repo: Path, write_agent: AgentFactory
) -> None:
    common = repo / ".git"
    dirs = [common, common / "objects", common / "logs", common / "refs" / "heads"]
    before = [stat.S_IMODE(d.stat().st_mode) for d in dirs]
    agent = " ".join(write_agent(SHARES_THE_GIT_DIR))
    out = swarm(repo, "run", "--agent", agent, "-t", "a=p")
    assert out.returncode == 1, out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert "logs, objects, refs/heads; restored" in str(row["reason"])
    assert [stat.S_IMODE(d.stat().st_mode) for d in dirs] == before
    worktree = Path(str(row["worktree"]))
    assert not stat.S_IMODE(worktree.stat().st_mode) & 0o022
    for path in (common / "logs" / ".cache-sh", common / "objects" / "ab" / "x"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755  # kept, and harmless
    writes = events(repo, "outside_write")
    assert [(w["git_files"], w["suspects"], w["restored"]) for w in writes] == [
        ([str(worktree), str(common), "logs", "objects", "refs/heads"], ["a"], True),
        (["logs/.cache-sh", "objects/ab/x"], ["a"], True),
    ]


# A setuid program planted in the git dir, found by the guard's walk for them: every 10 s and
# at the end, not in the scan a task waits for as it ends.
PLANTS_SETUID = """
import pathlib, subprocess
g = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True,
).stdout.strip())
(g / 'logs' / '.cache-sh').write_text('#!/bin/sh\\n')
(g / 'logs' / '.cache-sh').chmod(0o4755)
pathlib.Path('own.txt').write_text('own\\n')
"""


def _late_plant(repo: Path, write_agent: AgentFactory, *, exit_code: int) -> list[str]:
    """Run `first`, then `late`, whose agent plants a setuid file the last scan finds.

    `late` starts once `first` is done, after the scan that walked the git dir: its plant is
    found by the last scan, after `late` ended. What the run said of `late`, line by line.
    """
    plant = write_agent(PLANTS_SETUID + f"raise SystemExit({exit_code})\n")
    work = write_agent("open('own.txt', 'w').write('x')")
    path = manifest(
        repo,
        f'[[task]]\nid = "first"\nprompt = "p"\nagent = {argv_toml(work)}\n'
        f'[[task]]\nid = "late"\nprompt = "p"\nagent = {argv_toml(plant)}\n'
        'depends_on = ["first"]\n',
    )
    out = swarm(repo, "run", path)
    assert out.returncode == 1, out.stderr
    row = status_json(repo)["late"]
    assert row["state"] == "failed", row
    assert "logs/.cache-sh" in str(row["reason"]), row
    assert stat.S_IMODE((repo / ".git" / "logs" / ".cache-sh").stat().st_mode) == 0o755
    return [line for line in out.stdout.splitlines() if line.startswith("late: ")]


def test_a_done_task_a_later_verdict_fails_says_it_replaces_done(
    repo: Path, write_agent: AgentFactory
) -> None:
    # It said `late: failed`, as if `done` had not been said.
    said = _late_plant(repo, write_agent, exit_code=0)
    failed = [line for line in said if line.startswith("late: failed")]
    assert len(failed) == 1, said
    if "late: done" in said:  # the walk came after it (always, but on a very slow machine)
        assert said.index("late: done") < said.index(failed[0]), said
        assert failed[0].startswith("late: failed, replacing done - wrote outside its"), said


def test_a_failed_task_a_later_verdict_blames_withdraws_no_state(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Its state stays `failed`, only its reason changes: it read "failed, replacing failed".
    said = _late_plant(repo, write_agent, exit_code=1)
    assert any(line.startswith("late: failed - wrote outside its") for line in said), said
    assert not any("replacing" in line for line in said), said


def run_as_owner(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``swarm ARGS`` as a user whom file permissions bind (root without its override)."""
    return subprocess.run(
        [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_git_files_made_unreadable_get_their_permission_bits_back(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Unreadable, `.git/config` failed the guard's reading of git's files: nothing was put
    # back, and every git command of yours failed on it after the run.
    common = repo / ".git"
    before = {p: stat.S_IMODE(p.stat().st_mode) for p in (common / "config", common / "hooks")}
    agent = write_agent(
        "import os, pathlib, sys\n"
        "main = pathlib.Path(sys.argv[1])\n"
        "os.chmod(main / '.git' / 'config', 0); os.chmod(main / '.git' / 'hooks', 0)\n"
        "os.chmod(main / 'README.md', 0o755)\n"
        "pathlib.Path('own.txt').write_text('own\\n')\n"
    )
    out = run_as_owner(repo, "run", "--agent", " ".join([*agent, str(repo)]), "-t", "a=p")
    assert out.returncode == 1, out.stderr
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in before} == before
    assert stat.S_IMODE((repo / "README.md").stat().st_mode) & 0o111 == 0
    assert "git's own files config, hooks; restored" in str(status_json(repo)["a"]["reason"])
    assert [(w["where"], w["restored"]) for w in events(repo, "outside_write")] == [
        ("repository", True),
        (MAIN, True),
    ]


def test_rerere_cache_made_unreadable_hides_no_hook_planted_beside_it(
    repo: Path, write_agent: AgentFactory
) -> None:
    # An unlistable `rr-cache` failed every reading of git's files: a hook planted with it
    # stayed, to run with your next commit.
    resolution = repo / ".git" / "rr-cache" / ("ab" * 20)
    resolution.mkdir(parents=True)
    agent = write_agent(
        "import os, pathlib, sys\n"
        "git = pathlib.Path(sys.argv[1]) / '.git'\n"
        "hook = git / 'hooks' / 'pre-commit'\n"
        "hook.write_text('#!/bin/sh\\necho planted\\n'); hook.chmod(0o755)\n"
        "os.chmod(git / 'rr-cache', 0)\n"
        "pathlib.Path('own.txt').write_text('own\\n')\n"
    )
    out = run_as_owner(repo, "run", "--agent", " ".join([*agent, str(repo)]), "-t", "a=p")
    assert out.returncode == 1, out.stderr
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    assert stat.S_IMODE((repo / ".git" / "rr-cache").stat().st_mode) & 0o700 == 0o700
    assert resolution.is_dir()
    assert "git's own files" in str(status_json(repo)["a"]["reason"])


def test_files_of_your_checkout_made_unreadable_are_yours_to_read_again(
    repo: Path, write_agent: AgentFactory
) -> None:
    (repo / "src").mkdir()
    (repo / "src" / "a.py").write_text("a\n")
    git(repo, "add", "src")
    git(repo, "commit", "-qm", "src")
    agent = write_agent(
        "import os, pathlib, sys\n"
        "main = pathlib.Path(sys.argv[1])\n"
        "os.chmod(main / 'README.md', 0); os.chmod(main / 'src', 0)\n"
        "pathlib.Path('own.txt').write_text('own\\n')\n"
    )
    out = run_as_owner(repo, "run", "--agent", " ".join([*agent, str(repo)]), "-t", "a=p")
    assert out.returncode == 1, out.stderr
    reason = str(status_json(repo)["a"]["reason"])
    assert "files README.md, src in the main checkout; restored" in reason, reason
    assert stat.S_IMODE((repo / "README.md").stat().st_mode) & 0o600 == 0o600
    assert stat.S_IMODE((repo / "src").stat().st_mode) & 0o700 == 0o700
    mine = subprocess.run([*as_owner_only(), "git", "status"], cwd=repo, check=False)
    assert mine.returncode == 0


# Setuid and setgid programs left in its own worktree (as root, a copy of a shell there gives
# root to any local user who reaches it): one the agent committed itself, two the checkpoint
# commits. git records no setuid bit: the branch looks clean.
LEAVES_SETUID_PROGRAMS = """
import os, pathlib, subprocess
def program(path, bits):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('#!/bin/sh\\n')
    path.chmod(bits)
program(pathlib.Path('committed'), 0o2755)
subprocess.run(['git', 'add', 'committed'], check=True)
subprocess.run(['git', 'commit', '-q', '-m', 'a tool'], check=True)
program(pathlib.Path('tool'), 0o4755)
program(pathlib.Path('sub', 'deep'), 0o6750)
program(pathlib.Path(os.fsdecode(b'x-\\xff')), 0o4755)  # a name of any bytes: named as git does
"""


def test_setuid_programs_an_agent_leaves_in_its_worktree_are_disarmed(
    repo: Path, write_agent: AgentFactory
) -> None:
    agent = " ".join(write_agent(LEAVES_SETUID_PROGRAMS))
    out = swarm(repo, "run", "--agent", agent, "-t", "a=p")
    assert out.returncode == 1, out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    assert row["reason"] == (
        'made setuid or setgid programs in its worktree (committed, sub/deep, tool, "x-\\377"): '
        "their setuid and setgid bits are taken off"
    )
    worktree = Path(str(row["worktree"]))
    modes = {
        name: stat.S_IMODE((worktree / name).stat().st_mode)
        for name in ("committed", "tool", "sub/deep", os.fsdecode(b"x-\xff"))
    }
    assert modes == {"committed": 0o755, "tool": 0o755, "sub/deep": 0o750, "x-\udcff": 0o755}
    assert git(repo, "show", "swarm/a:tool") == "#!/bin/sh"  # the work itself is kept


def test_a_setuid_program_the_checkpoint_leaves_out_is_disarmed_too(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Past max_file it stays in the worktree, never on the branch: it kept its setuid bit.
    agent = write_agent(
        "import pathlib\n"
        "tool = pathlib.Path('tool'); tool.write_bytes(b'#!/bin/sh\\n' + b'#' * 8192)\n"
        "tool.chmod(0o4755)\n"
    )
    text = '[defaults]\nmax_file = "2K"\n[[task]]\nid = "a"\nprompt = "p"\n'
    text += f"agent = {argv_toml(agent)}\n"
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 1, out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "failed"
    worktree = Path(str(row["worktree"]))
    assert stat.S_IMODE((worktree / "tool").stat().st_mode) == 0o755


def test_a_setuid_program_a_stopped_agent_left_is_disarmed_by_swarm_stop(
    repo: Path, write_agent: AgentFactory
) -> None:
    # Its manager killed, `swarm stop` makes the task's last checkpoint, and looks likewise.
    agent = write_agent(
        "import pathlib, time\n"
        "tool = pathlib.Path('tool'); tool.write_text('#!/bin/sh\\n'); tool.chmod(0o4755)\n"
        "pathlib.Path('ready').touch()\n"
        "time.sleep(600)\n"
    )
    proc = swarm_bg(repo, "run", "--agent", " ".join(agent), "-t", "a=p")
    try:
        worktree = repo.parent / "repo.swarm" / "a"
        wait_for((worktree / "ready").exists, what="the agent")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        out = swarm(repo, "stop", "a")
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        proc.kill()
    assert str(status_json(repo)["a"]["reason"]).endswith(
        "made setuid or setgid programs in its worktree (tool): "
        "their setuid and setgid bits are taken off"
    )
    assert stat.S_IMODE((worktree / "tool").stat().st_mode) == 0o755
