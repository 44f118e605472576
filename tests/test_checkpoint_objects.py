"""What a checkpoint leaves out is never an object of yours: staged apart, then moved in.

`git add` hashes a file into `.git/objects` before anything can read it: a file the checkpoint
then left out (the value of a secret in it, past max_file) lay in your store, in no commit,
until `git gc` pruned it, two weeks later by default.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import GIT_SUBCOMMAND, git, git_first_on_path, hang_git_at, killed_at_git
from tests.test_filtered_objects import stored_bytes
from tests.test_run import status_json, swarm, wait_for
from worktree_swarm.core.errors import GitError
from worktree_swarm.git import checkpoints, index_copy, quarantine, removal
from worktree_swarm.git.repo import open_repo
from worktree_swarm.infra import redact

AgentFactory = Callable[[str], list[str]]
KEY = "sk-ant-api03-" + "q" * 30
BIG = b"BigFileMarker" * 400  # 5,200 bytes: past a max_file of 4K
AUTHOR = "a <a@example.com>"
# `env` options that give a git run inside a checkpoint's staging the worktree's own index.
_YOURS = "-u GIT_INDEX_FILE -u GIT_OBJECT_DIRECTORY -u GIT_ALTERNATE_OBJECT_DIRECTORIES"


def _left_behind(repo: Path) -> list[Path]:
    """What checkpoints left in the git dirs of *repo* and its worktrees."""
    dotgit = repo / ".git"
    return [
        *dotgit.glob(f"{quarantine.PREFIX}*"),
        *dotgit.glob(f"worktrees/*/{quarantine.PREFIX}*"),
    ]


def _index_objects_exist(worktree: Path) -> bool:
    """Whether every object *worktree*'s index names is in the repository's store."""
    staged = git(worktree, "ls-files", "-s").splitlines()
    names = "".join(f"{line.split()[1]}\n" for line in staged)
    missing = subprocess.run(
        ["git", "cat-file", "--batch-check"], cwd=worktree, input=names,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return "missing" not in missing


@pytest.mark.parametrize("threshold", [None, "1k"])
def test_what_a_checkpoint_leaves_out_is_in_no_object_of_the_repository(
    repo: Path,
    write_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
    threshold: str | None,
) -> None:
    # With a core.bigFileThreshold of 1k, `add` streams the files past it into a pack, the
    # secret's file and the kept one together.
    if threshold:
        git(repo, "config", "core.bigFileThreshold", threshold)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    agent = write_agent(
        "import os\n"
        "key = os.environb[b'ANTHROPIC_API_KEY']\n"
        "open('env.txt', 'wb').write(b'pad ' * 600 + key)\n"
        f"open('big.bin', 'wb').write({BIG!r})\n"
        "open('work.txt', 'w').write('work ' * 600)\n"
    )
    text = f'[defaults]\nmax_file = "4K"\n[[task]]\nid = "t"\nprompt = "x"\nagent = {agent!r}\n'
    (repo.parent / "swarm.toml").write_text(text.replace("'", '"'))
    out = swarm(repo, "run", str(repo.parent / "swarm.toml"))
    assert out.returncode == 1, out.stdout + out.stderr
    row = status_json(repo)["t"]
    assert str(row["reason"]).startswith("wrote the value of a secret into env.txt: left out")
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nwork.txt"
    assert git(repo, "show", "swarm/t:work.txt") == ("work " * 600).strip()
    stored = stored_bytes(repo)
    assert KEY.encode() not in stored
    assert BIG not in stored
    worktree = repo.parent / "repo.swarm" / "t"
    assert KEY.encode() in (worktree / "env.txt").read_bytes()  # not lost: left where it was
    assert _index_objects_exist(worktree)
    assert not _left_behind(repo)
    git(repo, "fsck", "--no-dangling")


def test_a_checkpoint_killed_while_it_looks_at_what_it_staged_leaves_the_index_whole(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Killed after its `add`, as it reads the staged files for a secret's value: the index
    # of the worktree names no object the repository lacks, and the next checkpoint commits
    # the work, the secret still left out and in no object.
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    (worktree / "env.txt").write_text(f"KEY={KEY}\n")
    (worktree / "work.txt").write_text("work\n")
    (worktree / "README.md").write_text("edited\n")
    _kill_in_staging(worktree, tmp_path, monkeypatch)
    assert _left_behind(repo)  # killed inside its staging
    assert _index_objects_exist(worktree)
    assert git(worktree, "diff", "--cached", "--name-only") == ""  # nothing staged yet
    again = subprocess.run(_checkpoint_argv(worktree), capture_output=True, text=True, check=False)
    assert again.stdout == "SecretLeftOutError\n", again.stderr
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t") == "README.md\nwork.txt"
    assert git(repo, "show", "swarm/t:README.md") == "edited"
    assert KEY.encode() not in stored_bytes(repo)
    assert not _left_behind(repo)
    assert _index_objects_exist(worktree)


def test_a_rescues_store_killed_half_way_goes_with_the_next_rescue_a_live_ones_never(
    repo: Path,
) -> None:
    # A rescue's store in the repository's git dir is held (flock) while its rescue works:
    # the next one removes a store none holds, however young, never one still in use.
    common = repo / ".git"
    old = time.time() - 3600
    killed = common / f"{quarantine.APART_PREFIX}killed"
    (killed / "objects").mkdir(parents=True)
    young = common / f"{quarantine.APART_PREFIX}young"
    young.mkdir()
    os.utime(killed, (old, old))
    with quarantine.apart(repo, common) as live:
        held = live.objects
        os.utime(held, (old, old))
        with quarantine.apart(repo, common) as other:
            assert other.objects != held
            assert held.is_dir()
            assert not young.exists()
            assert not killed.exists()
        assert not other.objects.exists()
    assert not held.exists()


def test_a_rescue_killed_in_its_add_leaves_nothing_outside_the_repository(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its index was in a directory of /tmp, left there by a rescue killed half-way (`swarm
    # doctor` killed with its machine); now it is in the rescue's store, gone with the next.
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "saved.txt").write_text("saved\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from worktree_swarm.git import removal\nfrom worktree_swarm.git.repo import open_repo\n"
        "removal.snapshot_files(open_repo(Path(sys.argv[1])), Path(sys.argv[2]), message='m')\n"
    )
    killed_at_git(
        tmp_path, monkeypatch, "add", [sys.executable, "-c", script, str(repo), str(stray)]
    )
    assert list(scratch.iterdir()) == []
    saved = removal.snapshot_files(open_repo(repo), stray, message="rescued")
    assert saved.sha is not None
    assert git(repo, "show", f"{saved.sha}:saved.txt") == "saved"
    assert list((repo / ".git").glob(f"{quarantine.APART_PREFIX}*")) == []


def test_a_store_swept_as_it_is_made_before_it_is_held_is_made_again(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No age spares a store just made: a sweep between its making and its lock removes it,
    # and the checkpoint makes another, held before it is filled.
    made: list[Path] = []
    real = tempfile.mkdtemp

    def swept_once(**kwargs: str) -> str:
        path = real(**kwargs)
        made.append(Path(path))
        if len(made) == 1:
            quarantine.sweep(Path(path).parent)  # another checkpoint's, at that moment
        return path

    monkeypatch.setattr(quarantine.tempfile, "mkdtemp", swept_once)
    with index_copy.staging(repo) as staging:
        own = staging.index.parent
        assert len(made) == 2
        assert not made[0].exists()
        assert own == made[1]
        # The directory is the store, empty: git makes the directories it writes into (each
        # one an inode), and the index copy is its only file.
        assert [p.name for p in own.iterdir()] == ["index"]
        assert staging.objects == own
        quarantine.sweep(own.parent)  # held: a sweep now leaves it
        assert own.is_dir()
    assert not own.exists()


def test_a_checkpoint_that_stages_nothing_leaves_the_index_unlocked(repo: Path) -> None:
    # Its copy of the index is a hard link, which an `add` that changes nothing leaves as it
    # is: renamed onto the index through index.lock, the lock stayed (the same file twice),
    # and every later git in the worktree failed on it.
    worktree = repo.parent / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    os.utime(worktree / "README.md", (1e9, 1e9))  # not changed within the index's second
    git(worktree, "update-index", "--refresh")
    admin = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
    assert checkpoints.checkpoint(worktree, message="m", author="a <a@example.com>") is None
    assert not (admin / "index.lock").exists()
    (worktree / "work.txt").write_text("work\n")
    assert checkpoints.checkpoint(worktree, message="m", author="a <a@example.com>")
    assert git(repo, "show", "swarm/t:work.txt") == "work"


def _kill_in_staging(worktree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL a checkpoint of *worktree* after its `add`, as it reads what it staged for the
    value of ANTHROPIC_API_KEY (set to KEY from now on); the real git from then on."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)  # the children's: each reads its own
    killed_at_git(tmp_path, monkeypatch, "diff", _checkpoint_argv(worktree))


def _checkpoint_argv(worktree: Path) -> list[str]:
    """A Python running a checkpoint of *worktree* that prints the error it ends with."""
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from worktree_swarm.git import checkpoints\n"
        "try:\n"
        "    checkpoints.checkpoint(Path(sys.argv[1]), message='m', author='a <a@example.com>',"
        " report_secrets=True)\n"
        "except checkpoints.LeftOutError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    return [sys.executable, "-c", script, str(worktree)]


@pytest.mark.parametrize("then", [("clean", "--all", "--yes"), ("retry", "t", "--fresh")])
def test_a_secret_of_a_tasks_env_its_run_left_out_is_not_committed_by_a_later_command(
    repo: Path, write_agent: AgentFactory, then: tuple[str, ...]
) -> None:
    # The value is the task's own (its `env`), not in the environment of the later swarm:
    # `swarm clean` and `swarm retry --fresh` checkpoint the worktree, where the file the
    # run's checkpoint left out still is.
    value = "sk-ant-api03-" + "e" * 30
    agent = write_agent(
        "import os\n"
        "open('env.txt', 'w').write(os.environ['API_TOKEN'])\n"
        "open('work.txt', 'w').write('work')\n"
    )
    text = (
        f'[[task]]\nid = "t"\nprompt = "x"\nagent = {agent!r}\nenv = {{ API_TOKEN = "{value}" }}\n'
    )
    (repo.parent / "swarm.toml").write_text(text.replace("'", '"'))
    assert swarm(repo, "run", str(repo.parent / "swarm.toml")).returncode == 1
    assert status_json(repo)["t"]["reason"].startswith("wrote the value of a secret into env.txt")
    swarm(repo, *then)
    history = subprocess.run(
        ["git", "log", "-p", "--all"], cwd=repo, capture_output=True, check=True
    ).stdout
    assert value.encode() not in history
    assert value.encode() not in stored_bytes(repo)


def test_a_checkpoint_that_leaves_a_file_out_keeps_the_trees_its_sparse_index_names(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With index.sparse, `add` folds a directory outside the cone whose files are all skipped
    # back into one entry, writing its tree itself (into the checkpoint's own store). Only
    # the blobs the index still names were moved into yours: the index named a tree your
    # store lacked, and the commit read that directory as empty (b/c/z.txt deleted).
    for name in ("a/x.txt", "b/y.txt", "b/c/z.txt"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(f"{name}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "dirs")
    git(repo, "config", "index.sparse", "true")
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    admin = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
    (admin / "info").mkdir()
    (admin / "info" / "sparse-checkout").write_text("/*\n!/*/\n/a/\n")  # a/ alone, in cone mode
    sparse = ("-c", "core.sparseCheckout=true", "-c", "core.sparseCheckoutCone=true")
    git(worktree, *sparse, "read-tree", "-mu", "HEAD")
    assert not (worktree / "b").exists()
    (worktree / "b").mkdir()
    (worktree / "b" / "y.txt").write_text("edited outside the cone\n")
    assert checkpoints.checkpoint(worktree, message="m", author=AUTHOR) is not None
    (worktree / "b" / "y.txt").unlink()  # b/ all skipped again: folded back into a tree
    (worktree / "a" / "env.txt").write_text(f"KEY={KEY}\n")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setattr(redact, "_current", None)  # this process's redactor: read again
    with pytest.raises(checkpoints.SecretLeftOutError):
        checkpoints.checkpoint(worktree, message="m", author=AUTHOR, report_secrets=True)
    assert git(repo, "ls-tree", "-r", "--name-only", "swarm/t").split() == [
        "README.md", "a/x.txt", "b/c/z.txt",
    ]  # fmt: skip
    assert _index_objects_exist(worktree)
    assert KEY.encode() not in stored_bytes(repo)
    git(repo, "fsck", "--no-dangling")


def test_a_fan_out_directory_swapped_for_a_link_as_it_is_made_gets_no_mode_through_it(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint makes the fan-out directory of a kept object in your store, then gives it
    # the store's mode. Between the two, an agent writing `.git/objects` (also under
    # --sandbox) can put a link to any directory of yours in its place: the mode was set on
    # that directory (a private one made readable by all).
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    store = repo / ".git" / "objects"
    made = Path.mkdir

    def swapped(self: Path, *args: object, **kwargs: object) -> None:
        made(self, *args, **kwargs)  # type: ignore[arg-type]
        if self.parent == store and len(self.name) == 2:
            self.rename(tmp_path / f"aside-{self.name}")
            self.symlink_to(private)

    (repo / "work.txt").write_text("work of a new object\n")
    monkeypatch.setattr(Path, "mkdir", swapped)
    checkpoints.checkpoint(repo, message="m", author=AUTHOR)
    monkeypatch.undo()
    assert private.stat().st_mode & 0o777 == 0o700


def test_a_checkpoint_cut_short_leaves_a_split_index_readable(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With core.splitIndex, the staging's `add` writes a new shared index beside the
    # worktree's, and git deletes the shared indexes older than splitIndex.sharedIndexExpire
    # (`now`: all but its own), the one the worktree's index still names among them: a
    # checkpoint that failed (a full disk) or was killed before it put its copy in place left
    # an index no git could read, and every later checkpoint failed on it.
    git(repo, "config", "core.splitIndex", "true")
    git(repo, "config", "splitIndex.sharedIndexExpire", "now")
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    for number in range(20):  # enough for `add` to write a shared index of its own
        (worktree / f"new{number}.txt").write_text(f"{number}\n")

    def full(self: index_copy.Staging, keep: object = None) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(index_copy.Staging, "settle", full)
        with pytest.raises(OSError, match="No space left"):
            checkpoints.checkpoint(worktree, message="m", author=AUTHOR)
    assert git(worktree, "status", "--porcelain").count("?? new") == 20
    assert checkpoints.checkpoint(worktree, message="m", author=AUTHOR) is not None
    assert len(git(repo, "ls-tree", "--name-only", "swarm/t").split()) == 21


def test_a_rescue_leaves_your_split_index_readable(repo: Path, tmp_path: Path) -> None:
    # The rescue's `write-tree` rewrote its own index, writing a new shared index (at once,
    # with splitIndex.maxPercentChange 0) and deleting those older than
    # splitIndex.sharedIndexExpire (`now`): the one your checkout's index names among them.
    # Every git in your checkout then failed: "index file open failed".
    for key, value in [("core.splitIndex", "true"), ("splitIndex.maxPercentChange", "0")]:
        git(repo, "config", key, value)
    git(repo, "config", "splitIndex.sharedIndexExpire", "now")
    (repo / "mine.txt").write_text("mine\n")
    git(repo, "add", "mine.txt")  # your index, split: its shared index in .git
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "saved.txt").write_text("saved\n")
    saved = removal.snapshot_files(open_repo(repo), stray, message="rescued")
    assert saved.sha is not None
    assert git(repo, "show", f"{saved.sha}:saved.txt") == "saved"
    assert git(repo, "status", "--porcelain") == "A  mine.txt"


def test_objects_move_into_a_store_on_another_file_system_as_copies(tmp_path: Path) -> None:
    # `.git/objects` a symlink to another disk: no hard link reaches it, a copy does.
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", str(repo))
    with tempfile.TemporaryDirectory(dir=shm) as far:
        store = Path(far) / "objects"
        shutil.move(repo / ".git" / "objects", store)
        (repo / ".git" / "objects").symlink_to(store)
        (repo / "f.txt").write_text("far away\n")
        with index_copy.staging(repo) as staging:
            git_env = {**os.environ, **staging.env}
            subprocess.run(["git", "add", "f.txt"], cwd=repo, env=git_env, check=True)
            staging.settle()
        blob = git(repo, "rev-parse", ":f.txt")
        assert git(repo, "cat-file", "-p", blob) == "far away"
        assert (store / blob[:2] / blob[2:]).stat().st_nlink == 1  # a copy of its own
        assert not _left_behind(repo)


def test_a_copy_cut_short_leaves_no_temporary_file_in_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store on another file system, the disk full as an object is copied there: nothing
    # half-written (`tmp_obj_*`) stays in it, to be taken for garbage until `git gc`.
    own, store = tmp_path / "own", tmp_path / "store"
    (own / "ab").mkdir(parents=True)
    store.mkdir()
    (own / "ab" / ("c" * 38)).write_bytes(b"an object")

    def no_link(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(quarantine.os, "link", no_link)
    monkeypatch.setattr(quarantine.shutil, "copyfileobj", full)
    with pytest.raises(OSError, match="No space left"):
        quarantine.Apart(tmp_path, own, store).move_in()
    assert [p.name for p in (store / "ab").iterdir()] == []


def test_a_stale_index_lock_a_killed_git_left_is_taken_over(repo: Path) -> None:
    # Older than a git holds one for: left by a git killed half-way (or planted).
    worktree = repo.parent / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    admin = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
    (admin / "index.lock").write_text("")
    os.utime(admin / "index.lock", (1e9, 1e9))
    (worktree / "work.txt").write_text("work\n")
    assert checkpoints.checkpoint(worktree, message="m", author="a <a@example.com>")
    assert git(repo, "show", "swarm/t:work.txt") == "work"
    assert not (admin / "index.lock").exists()


def _stores_in(worktree: Path) -> list[Path]:
    """The staging stores in *worktree*'s git dir."""
    return sorted(
        Path(git(worktree, "rev-parse", "--absolute-git-dir")).glob(f"{quarantine.PREFIX}*")
    )


def _doctor(repo: Path, *args: str) -> dict[str, dict[str, object]]:
    """`swarm doctor --json`'s findings of kind staging, by target."""
    out = swarm(repo, "doctor", *args, "--json")
    assert out.returncode in (0, 1), out.stdout + out.stderr
    found = json.loads(out.stdout)["findings"]
    return {str(f["target"]): f for f in found if f["kind"] == "staging"}


def test_what_a_checkpoint_killed_half_way_left_is_found_and_removed_by_doctor(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worktree kept for you (a failed task's) may never be checkpointed again: the store
    # its killed checkpoint left, a secret's value in it, goes with `swarm doctor --yes`.
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    (worktree / "env.txt").write_text(f"KEY={KEY}\n")
    _kill_in_staging(worktree, tmp_path, monkeypatch)
    (left,) = _stores_in(worktree)
    hashed = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"], cwd=repo, capture_output=True,
        env={**os.environ, "GIT_OBJECT_DIRECTORY": str(left)}, check=True,
    ).stdout  # fmt: skip
    assert KEY.encode() in hashed  # what it left holds the secret's value

    planned = _doctor(repo)
    assert list(planned) == [str(left)]
    assert planned[str(left)]["action"] == "remove_staging"
    assert "a checkpoint killed half-way" in str(planned[str(left)]["reason"])
    assert left.is_dir()  # a dry run only looks

    done = _doctor(repo, "--yes")
    assert done[str(left)]["fixed"] is True, done
    assert not left.exists()
    assert _doctor(repo) == {}
    assert git(worktree, "status", "--porcelain") == "?? env.txt"  # the worktree as it was


_HOLDER = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "open(sys.argv[2], 'w').close()\n"
    "while not os.path.exists(sys.argv[3]):\n"
    "    time.sleep(0.05)\n"
)


@pytest.mark.parametrize("where", ["worktree", "main", "rescue"])
def test_a_store_a_live_process_holds_is_never_swept_nor_removed_by_doctor(
    repo: Path, tmp_path: Path, where: str
) -> None:
    # A checkpoint or rescue at work holds its store: however old, the sweep of a checkpoint
    # of the same worktree leaves it, and so does `swarm doctor`, until its holder is gone.
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    admin = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
    common = repo / ".git"
    store = {
        "worktree": admin / f"{quarantine.PREFIX}live",
        "main": common / f"{quarantine.PREFIX}live",
        "rescue": common / f"{quarantine.APART_PREFIX}live",
    }[where]
    (store / "objects" / "pack").mkdir(parents=True)
    (store / "index").write_text("staged")
    old = time.time() - 3600
    os.utime(store, (old, old))
    ready, go = tmp_path / "ready", tmp_path / "go"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store), str(ready), str(go)])
    try:
        wait_for(ready.exists, timeout=30, what="the store to be held")
        (worktree / "work.txt").write_text("work\n")
        assert checkpoints.checkpoint(worktree, message="m", author=AUTHOR)
        (repo / "mine.txt").write_text("mine\n")
        assert checkpoints.checkpoint(repo, message="m", author=AUTHOR)
        assert (store / "index").read_text() == "staged"
        assert _doctor(repo) == {}
        assert _doctor(repo, "--yes") == {}
        assert (store / "index").read_text() == "staged"
    finally:
        go.touch()
        holder.wait(timeout=30)
    assert list(_doctor(repo)) == [str(store)]  # none holds it now
    assert _doctor(repo, "--yes")[str(store)]["fixed"] is True
    assert not store.exists()


def test_doctor_removes_a_link_or_file_by_a_stores_name_as_itself(
    repo: Path, tmp_path: Path
) -> None:
    # Planted (an agent can write the git dirs): removed, never what a link points to.
    yours = tmp_path / "yours"
    (yours / "objects").mkdir(parents=True)
    (yours / "keep.txt").write_text("keep\n")
    common = repo / ".git"
    link = common / f"{quarantine.PREFIX}link"
    link.symlink_to(yours, target_is_directory=True)
    planted = common / f"{quarantine.APART_PREFIX}file"
    planted.write_text("x")
    planned = _doctor(repo)
    assert sorted(planned) == sorted([str(link), str(planted)])
    assert "never what it points to" in str(planned[str(link)]["fix"])
    done = _doctor(repo, "--yes")
    assert all(f["fixed"] is True for f in done.values()), done
    assert not link.is_symlink()
    assert not planted.exists()
    assert (yours / "keep.txt").read_text() == "keep\n"
    assert (yours / "objects").is_dir()


def test_a_checkpoint_killed_before_its_add_leaves_the_index_under_one_name(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its staging's index was a hard link to the worktree's until `add` wrote it anew: killed
    # in between, the index had a second name, which the resumed run took for a link an
    # agent planted where git writes (the task failed).
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    (worktree / "work.txt").write_text("work\n")
    hung = hang_git_at(tmp_path, monkeypatch, "add")
    proc = subprocess.Popen(_checkpoint_argv(worktree), start_new_session=True)
    try:
        wait_for(hung.exists, timeout=60, what="the checkpoint's add")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert _left_behind(repo)  # killed inside its staging
    admin = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
    assert (admin / "index").stat().st_nlink == 1


def _logs_ignored(repo: Path, tmp_path: Path) -> Path:
    """Task t's worktree, where `*.log` is ignored and work.txt is the agent's work."""
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    (worktree / ".gitignore").write_text("*.log\n")
    (worktree / "work.txt").write_text("work\n")
    return worktree


def test_what_another_git_staged_while_a_checkpoint_ran_is_kept_and_committed(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpoint stages into a copy of the index and puts it in place at the end: your
    # `git add -f` in the task's worktree meanwhile (an ignored file you want kept) was
    # replaced by the copy from before it, and the file went unstaged and uncommitted.
    worktree = _logs_ignored(repo, tmp_path)
    (worktree / "keep.log").write_text("wanted\n")
    real = shutil.which("git")
    assert real is not None
    users_add = f"env {_YOURS} {real} -C {worktree} add -f keep.log; exit 0"
    # Your git runs once the checkpoint's `add` staged into its copy, before it is settled.
    hung = hang_git_at(tmp_path, monkeypatch, "add", after=True, then=users_add)
    out = subprocess.run(_checkpoint_argv(worktree), capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert hung.exists()  # your git ran in the middle of it
    assert git(repo, "show", "swarm/t:keep.log") == "wanted"
    assert git(repo, "show", "swarm/t:work.txt") == "work"
    assert "keep.log" in git(worktree, "ls-files")
    assert not _left_behind(repo)


def test_a_checkpoint_whose_index_another_git_keeps_writing_gives_up_keeping_its_writes(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Staged again after each write of the other git's, three times: then the checkpoint
    # fails saying why, and the index is as that git left it, nothing of the copies put back.
    worktree = _logs_ignored(repo, tmp_path)
    for number in range(3):
        (worktree / f"mine{number}.log").write_text(f"{number}\n")
    users_add = f'env {_YOURS} "$REAL" -C {worktree} add -f mine$n.log'
    writes = _after_each_staging(tmp_path, monkeypatch, users_add)
    out = subprocess.run(_checkpoint_argv(worktree), capture_output=True, text=True, check=False)
    assert out.returncode != 0, out.stdout
    assert "another git wrote the index while swarm staged a checkpoint there" in out.stderr
    assert len(list(writes.iterdir())) == 3
    staged = git(worktree, "ls-files").split()
    assert {f"mine{n}.log" for n in range(3)} <= set(staged)  # each of its writes kept
    assert "work.txt" not in staged  # no copy of the checkpoint's put in place
    assert not _left_behind(repo)


def _after_each_staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: str) -> Path:
    """A `git` first on PATH that runs the shell *then* after each `add` into an index copy.

    Returns the directory counting them (a file each, named 0, 1, ...; ``$n`` in *then*).
    """
    writes = tmp_path / "writes"
    writes.mkdir()
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        GIT_SUBCOMMAND
        + 'if [ "$sub" = add ] && [ -n "$GIT_INDEX_FILE" ]; then\n'
        f'  {real} "$@" || exit $?\n'
        f"  n=$(ls {writes} | wc -l); touch {writes}/$n\n"
        f"  REAL={real}; {then}; exit 0\n"
        "fi\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    return writes


def test_an_index_rewritten_with_the_same_entries_meanwhile_takes_the_checkpoint_at_once(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An editor's or shell prompt's `git status` rewrites the index to refresh the times it
    # caches, again and again: taken for another git's write, it failed every staging.
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    (worktree / "work.txt").write_text("work\n")
    index = Path(git(worktree, "rev-parse", "--absolute-git-dir")) / "index"
    rewrite = f"cp -p {index} {index}.new && mv {index}.new {index}"  # the same entries
    writes = _after_each_staging(tmp_path, monkeypatch, rewrite)
    out = subprocess.run(_checkpoint_argv(worktree), capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(list(writes.iterdir())) == 1  # staged once
    assert git(repo, "show", "swarm/t:work.txt") == "work"


def test_a_checkpoint_staged_again_leaves_out_what_it_leaves_out_each_time(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Staged again after another git wrote the index, the checkpoint started from that
    # index without taking the paths it excludes (a `link` to your node_modules) out of it
    # again: staged by that git, the link was committed.
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    (tmp_path / "deps").mkdir()
    (worktree / "node_modules").symlink_to(tmp_path / "deps")
    (worktree / "work.txt").write_text("work\n")
    users_add = f'[ "$n" = 0 ] && env {_YOURS} "$REAL" -C {worktree} add node_modules'
    writes = _after_each_staging(tmp_path, monkeypatch, users_add)
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from worktree_swarm.git import checkpoints\n"
        "checkpoints.checkpoint(Path(sys.argv[1]), message='m', author='a <a@example.com>',"
        " exclude=['node_modules'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(worktree)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(list(writes.iterdir())) == 2  # staged again once
    assert git(repo, "ls-tree", "--name-only", "swarm/t").split().count("node_modules") == 0
    assert git(repo, "show", "swarm/t:work.txt") == "work"


def test_a_checkpoint_never_takes_an_index_lock_another_git_holds(repo: Path) -> None:
    # A live git's lock (not stale) is waited for, then the checkpoint fails saying why,
    # the lock and the index left to that git.
    worktree = repo.parent / "wt"
    git(repo, "worktree", "add", "-q", "-b", "swarm/t", str(worktree))
    admin = Path(git(worktree, "rev-parse", "--absolute-git-dir"))
    before = (admin / "index").read_bytes()
    (worktree / "work.txt").write_text("work\n")
    (admin / "index.lock").write_bytes(b"another git's")
    with pytest.raises(GitError, match="another git is using the index"):
        checkpoints.checkpoint(worktree, message="m", author=AUTHOR)
    assert (admin / "index.lock").read_bytes() == b"another git's"
    assert (admin / "index").read_bytes() == before
    assert not _left_behind(repo)
