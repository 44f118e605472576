"""swarm's own git commands never run what a repository's files plant."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests import git_http
from tests.conftest import GIT_SUBCOMMAND, git, git_first_on_path, make_repo
from tests.test_run import wait_for
from tests.test_trust import FORGE_GRAPH
from worktree_swarm.core.errors import BadInputError, CommandError, GitError
from worktree_swarm.git import (
    checkpoints,
    config_overrides,
    gitconfig,
    object_reader,
    process,
    runner,
)
from worktree_swarm.infra import pipes, proc


def _plant(repo: Path, marker: Path) -> None:
    """Every way a repository's own files make plain git commands execute a program."""
    touch = f"touch {marker} #"
    git(repo, "config", "core.fsmonitor", touch)
    git(repo, "config", "filter.evil.clean", touch)
    git(repo, "config", "filter.evil.smudge", touch)
    git(repo, "config", "filter.evil.required", "true")
    git(repo, "config", "diff.evil.textconv", touch)
    git(repo, "config", "diff.external", touch)
    git(repo, "config", "merge.evil.driver", touch)
    git(repo, "config", "commit.gpgSign", "true")
    git(repo, "config", "gpg.program", f"{marker}-gpg")
    git(repo, "config", "gpg.ssh.defaultKeyCommand", f"touch {marker}-key #")
    info = repo / ".git" / "info"
    info.mkdir(exist_ok=True)
    (info / "attributes").write_text("* filter=evil diff=evil merge=evil\n")
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("reference-transaction", "post-checkout", "pre-commit", "post-commit"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR)


def test_planted_config_and_hooks_never_run(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _plant(repo, marker)
    (repo / "README.md").write_text("changed\n")
    (repo / "new.txt").write_text("new\n")
    runner.run(repo, "status", "--porcelain")
    runner.run(repo, "add", "--all")
    runner.run(repo, "diff", "--cached")
    runner.run(repo, "diff", "HEAD")
    tree = runner.run(repo, "write-tree").stdout.strip()
    head = runner.run(repo, "rev-parse", "HEAD").stdout.strip()
    env = gitconfig.identity_env("Swarm Test <swarm@example.com>")
    commit = runner.run(repo, "commit-tree", tree, "-p", head, "-m", "x", env=env).stdout.strip()
    runner.run(repo, "update-ref", "refs/heads/main", commit, head)
    runner.run(repo, "commit", "-q", "--allow-empty", "-m", "y", env=env)
    runner.run(repo, "merge-tree", "--write-tree", "HEAD", head, check=False)
    runner.run(repo, "checkout", "-q", "-b", "other")
    assert not marker.exists()
    assert not Path(f"{marker}-gpg").exists()
    # The same commands without the runner do run the planted program: the test is real.
    (repo / "README.md").write_text("again\n")
    git(repo, "status", "--porcelain")
    assert marker.exists()


@pytest.mark.parametrize("driver", ["a=b", "x=y=z"])
def test_a_planted_driver_whose_name_holds_an_equals_sign_never_runs(
    repo: Path, tmp_path: Path, driver: str
) -> None:
    # `-c filter.a=b.clean=` is read by git as `filter.a` set to `b.clean=`: the driver an
    # attribute `filter=a=b` selects ran under every hardened command.
    marker = tmp_path / "pwned"
    touch = f"touch {marker} #"
    for key in ("filter.{}.clean", "filter.{}.smudge", "diff.{}.textconv", "merge.{}.driver"):
        git(repo, "config", key.format(driver), touch)
    git(repo, "config", f"filter.{driver}.required", "true")
    git(repo, "config", f"credential.https://example.com/?{driver}.helper", touch)
    (repo / ".git" / "info" / "attributes").write_text(
        f"* filter={driver} diff={driver} merge={driver}\n"
    )
    (repo / "README.md").write_text("changed\n")
    runner.run(repo, "status", "--porcelain")
    runner.run(repo, "add", "--all")
    runner.run(repo, "diff", "--cached")
    runner.run(repo, "commit", "-q", "-m", "x", env=gitconfig.identity_env("S <s@example.com>"))
    runner.run(repo, "checkout", "-q", "HEAD~1", "--", "README.md")
    runner.run(repo, "credential", "fill", input_text="protocol=https\nhost=example.com\n\n",
               check=False)  # fmt: skip
    assert not marker.exists()
    (repo / "README.md").write_text("again\n")
    git(repo, "add", "--all")  # without the runner the filter runs: the test is real
    assert marker.exists()


def test_a_planted_upload_or_receive_pack_never_runs(repo: Path, tmp_path: Path) -> None:
    # A fetch or push to a path starts the remote's side as `remote.<name>.uploadpack` or
    # `.receivepack` names it: a program of the repository's config's choosing.
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    marker = tmp_path / "pwned"
    for key, program in (("uploadpack", "git-upload-pack"), ("receivepack", "git-receive-pack")):
        git(repo, "config", f"remote.origin.{key}", f"touch {marker}-{key}; {program}")
    runner.run(repo, "fetch", "-q", "origin")
    runner.run(repo, "push", "-q", "origin", "HEAD:refs/heads/pushed")
    assert not list(tmp_path.glob("pwned-*"))
    assert git(remote, "rev-parse", "pushed") == git(repo, "rev-parse", "HEAD")
    git(repo, "fetch", "-q", "origin")  # without the runner it runs: the test is real
    assert Path(f"{marker}-uploadpack").exists()


def _receiving_repository(tmp_path: Path, marker: Path, objects: Path) -> Path:
    """A bare repository whose own hooks and config run a program on a push it receives."""
    evil = tmp_path / "evil.git"
    git(tmp_path, "init", "-q", "--bare", str(evil))
    for name in ("pre-receive", "update", "post-receive", "post-update", "reference-transaction"):
        hook = evil / "hooks" / name
        hook.write_text(f"#!/bin/sh\ntouch {marker}-{name}\ncat >/dev/null\n")
        hook.chmod(0o755)
    (evil / "objects" / "info" / "alternates").write_text(f"{objects}\n")
    git(evil, "config", "core.alternateRefsCommand", f"touch {marker}-alternates; true")
    git(evil, "config", "receive.autogc", "true")
    git(evil, "config", "gc.auto", "1")
    return evil


@pytest.mark.parametrize(
    "redirect",
    [
        pytest.param("url.{evil}.insteadOf={origin}", id="insteadOf"),
        pytest.param("url.{evil}.pushInsteadOf={origin}", id="pushInsteadOf"),
        pytest.param("remote.origin.pushurl={evil}", id="pushurl"),
        pytest.param("remote.origin.url={evil}", id="url"),
    ],
)
def test_a_push_redirected_to_a_planted_repository_runs_none_of_its_programs(
    repo: Path, tmp_path: Path, redirect: str
) -> None:
    # A push to a path starts receive-pack in the repository that receives it, under that
    # repository's hooks and config, which swarm's `-c` overrides do not reach: an agent that
    # pointed the remote at a repository of its making had its hooks run by `swarm pr`.
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    marker = tmp_path / "pwned"
    evil = _receiving_repository(tmp_path, marker, origin / "objects")
    key, _, value = redirect.format(evil=evil, origin=origin).partition("=")
    git(repo, "config", key, value)
    (repo / "README.md").write_text("more\n")
    git(repo, "commit", "-qam", "more")
    runner.run(repo, "push", "-q", "--", "origin", "HEAD:refs/heads/swarm/t")
    assert not list(tmp_path.glob("pwned-*"))
    assert git(evil, "rev-parse", "swarm/t") == git(repo, "rev-parse", "HEAD")
    # Without the runner they run: the test is real.
    git(repo, "push", "-q", "origin", "HEAD:refs/heads/again")
    assert Path(f"{marker}-pre-receive").exists()
    assert Path(f"{marker}-alternates").exists()


def test_a_push_redirected_to_a_path_once_swarm_looked_where_it_goes_is_refused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The remote is no path when swarm looks; an agent plants the redirect right after (here:
    # as git starts the push). The push must fail, not reach the agent's repository.
    origin = "https://example.invalid/acme/w.git"
    git(repo, "remote", "add", "origin", origin)
    marker = tmp_path / "pwned"
    evil = _receiving_repository(tmp_path, marker, repo / ".git" / "objects")
    plant = f"url.{evil}.insteadOf"
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        GIT_SUBCOMMAND
        + f'if [ "$sub" = push ]; then {real} -C {shlex.quote(str(repo))} config'
        f" {shlex.quote(plant)} {origin}; fi\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    pushed = runner.run(repo, "push", "-q", "--", "origin", "HEAD:refs/heads/swarm/t", check=False)
    assert pushed.returncode != 0
    assert "transport 'file' not allowed" in pushed.stderr
    assert not list(tmp_path.glob("pwned-*"))
    assert git(evil, "for-each-ref") == ""


def _runs_configured_hooks() -> bool:
    """Whether the git on PATH runs hooks its config defines (``hook.<x>.command``: 2.54 on)."""
    with tempfile.TemporaryDirectory() as scratch:
        ran = Path(scratch) / "ran"
        subprocess.run(
            ["git", "-c", f"hook.probe.command=touch {ran}", "-c", "hook.probe.event=pre-commit",
             "hook", "run", "--ignore-missing", "pre-commit"],
            cwd=scratch, capture_output=True, check=False,
        )  # fmt: skip
        return ran.exists()


needs_configured_hooks = pytest.mark.skipif(
    not _runs_configured_hooks(), reason="this git runs no hook its config defines (< 2.54)"
)
_HOOK_EVENTS = (
    "reference-transaction", "post-index-change", "pre-commit", "prepare-commit-msg",
    "commit-msg", "post-commit", "post-checkout", "pre-merge-commit", "post-merge", "pre-push",
    "pre-auto-gc", "post-rewrite", "pre-receive", "update", "post-receive", "post-update",
)  # fmt: skip


@needs_configured_hooks
def test_a_hook_planted_in_config_never_runs(repo: Path, tmp_path: Path) -> None:
    # git 2.54 runs `hook.<name>.command` at each `hook.<name>.event` whatever core.hooksPath
    # says: one planted in the repository's config ran in every checkpoint of swarm's.
    marker = tmp_path / "pwned"
    for name in ("evil", "a=b"):  # a name git splits at its `=` when given with `-c`
        git(repo, "config", f"hook.{name}.command", f"touch {marker}-{name.replace('=', '')} #")
        for event in _HOOK_EVENTS:
            git(repo, "config", "--add", f"hook.{name}.event", event)
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(bare, "config", "hook.there.command", f"touch {marker}-there #")
    for event in _HOOK_EVENTS:
        git(bare, "config", "--add", "hook.there.event", event)
    env = gitconfig.identity_env("Swarm Test <swarm@example.com>")
    (repo / "README.md").write_text("changed\n")
    runner.run(repo, "status", "--porcelain")
    runner.run(repo, "add", "--all")
    runner.run(repo, "commit", "-q", "-m", "x", env=env)
    runner.run(repo, "update-ref", "refs/heads/side", "HEAD~1")
    runner.run(repo, "checkout", "-q", "side")
    runner.run(repo, "merge", "-q", "--no-edit", "main", env=env)
    runner.run(repo, "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "swarm/t")
    runner.run(repo, "push", "-q", "--", str(bare), "side")
    assert not list(tmp_path.glob("pwned-*"))
    # Without the runner they run: the test is real.
    git(repo, "push", "-q", str(bare), "main")
    assert {p.name for p in tmp_path.glob("pwned-*")} == {"pwned-evil", "pwned-ab", "pwned-there"}
    assert config_overrides.runs_program("hook.evil.command")  # the guard judges them


def _partial_clone_with_planted_upload_pack(repo: Path, tmp_path: Path) -> tuple[str, Path]:
    """*repo* made a partial clone lacking a blob, its uploadpack planted.

    Returns the blob, and the file the planted program makes when it runs.
    """
    source = make_repo(tmp_path / "source", {"lazy.txt": "lazy\n"})
    marker = tmp_path / "pwned"
    git(repo, "config", "extensions.partialClone", "origin")
    git(repo, "config", "remote.origin.url", str(source))
    git(repo, "config", "remote.origin.uploadpack", f"touch {marker}; git-upload-pack")
    return git(source, "rev-parse", "HEAD:lazy.txt"), marker


def test_a_planted_upload_pack_never_runs_in_a_lazy_fetch(repo: Path, tmp_path: Path) -> None:
    # A partial clone fetches an object it lacks by starting `git fetch` itself, with no
    # `--upload-pack`: a planted one ran in any command reading that object.
    blob, marker = _partial_clone_with_planted_upload_pack(repo, tmp_path)
    out = runner.run(repo, "cat-file", "-p", blob, check=False)
    assert out.returncode != 0  # not fetched: swarm's git reads what the repository holds
    assert not marker.exists()
    # Without the runner it runs: the test is real.
    subprocess.run(["git", "cat-file", "-p", blob], cwd=repo, capture_output=True, check=False)
    assert marker.exists()


def test_a_planted_upload_pack_never_runs_in_a_lazy_fetch_of_a_git_that_ignores_its_switch(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # git before 2.39.4 (the README allows 2.38) ignores GIT_NO_LAZY_FETCH: the lazy fetch ran
    # the planted upload-pack. A git that drops the variable from its environment stands for it.
    git_first_on_path(
        tmp_path,
        monkeypatch,
        lambda real: f'#!/bin/sh\nunset GIT_NO_LAZY_FETCH\nexec {real} "$@"\n',
    )
    blob, marker = _partial_clone_with_planted_upload_pack(repo, tmp_path)
    for command in (["cat-file", "-p", blob], ["diff", "HEAD", blob]):
        assert runner.run(repo, *command, check=False).returncode != 0  # not fetched
    assert not marker.exists()
    # swarm's own push of a commit whose blob the clone lacks starts a lazy fetch, which names
    # no upload-pack: it ran the planted one. The transports are refused to it too.
    listing = f"100644 blob {blob}\tlazy.txt\n"
    made = subprocess.run(
        ["git", "mktree", "--missing"],
        cwd=repo,
        input=listing,
        text=True,
        capture_output=True,
        check=True,
    )
    tree = made.stdout.strip()
    commit = git(repo, "commit-tree", "-m", "lazy", tree)
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    pushed = runner.run(repo, "push", "-q", str(bare), f"{commit}:refs/heads/lazy", check=False)
    assert pushed.returncode != 0
    assert runner.run(repo, "fetch", "-q", "origin", check=False).returncode != 0
    assert not marker.exists()
    git(repo, "config", "--unset", "remote.origin.uploadpack")  # the plant put back
    runner.run(repo, "push", "-q", str(bare), f"{commit}:refs/heads/lazy")
    assert git(bare, "cat-file", "-p", f"{commit}:lazy.txt") == "lazy"
    git(repo, "config", "remote.origin.uploadpack", f"touch {marker}; git-upload-pack")
    git(repo, "config", "remote.origin.url", str(make_repo(tmp_path / "other", {"o": "o\n"})))
    other = git(tmp_path / "other", "rev-parse", "HEAD:o")
    # Without the runner it runs: the test is real.
    subprocess.run(["git", "cat-file", "-p", other], cwd=repo, capture_output=True, check=False)
    assert marker.exists()


_LFS_CONFIG = "lfs-config"
# Stands for git-lfs, which is not installed here: it reads the config as git-lfs does (`git
# config -l`, the last value of a key wins), keeps what it saw, and runs the extension's clean
# program on the file it cleans, split at spaces (no shell), as git-lfs does.
FAKE_GIT_LFS = f"""#!/bin/sh
git config -l > {_LFS_CONFIG}
clean=$(sed -n 's/^lfs\\.extension\\.evil\\.clean=//p' {_LFS_CONFIG} | tail -n 1)
if [ -n "$clean" ]; then exec $clean; fi
exec cat
"""


def test_what_the_git_lfs_of_your_global_config_reads_from_the_repository_never_runs(
    repo: Path, tmp_path: Path
) -> None:
    # git-lfs runs `lfs.extension.<x>.clean` on every file it cleans, and the repository's
    # config (which an agent can write) may name it: swarm's own `git add` ran it.
    lfs = tmp_path / "git-lfs"
    lfs.write_text(FAKE_GIT_LFS)
    lfs.chmod(0o755)
    git(repo, "config", "--global", "filter.lfs.clean", f"{lfs} clean -- %f")
    git(repo, "config", "--global", "filter.lfs.required", "true")
    (repo / ".gitattributes").write_text("*.bin filter=lfs\n")
    marker = tmp_path / "pwned"
    git(repo, "config", "lfs.extension.evil.clean", f"touch {marker}")
    git(repo, "config", "lfs.customtransfer.evil.path", f"touch {marker}-transfer")
    git(repo, "config", "lfs.customtransfer.evil.args", f"; touch {marker}-args")
    git(repo, "config", "remote.lfs.customtransfer.x.path", f"touch {marker}-unanchored")
    (repo / "big.bin").write_text("big\n")
    runner.run(repo, "add", "big.bin")  # the extension's clean program is `cat`
    assert not marker.exists()
    seen = (repo / _LFS_CONFIG).read_text().splitlines()
    last = {key: value for key, _, value in (line.partition("=") for line in seen)}
    assert last["lfs.extension.evil.clean"] == "cat"
    assert last["lfs.customtransfer.evil.path"] == "false"
    assert last["lfs.customtransfer.evil.args"] == ""
    assert last["remote.lfs.customtransfer.x.path"] == "false"
    planted = [key for key in seen if "evil" in key or key.startswith("remote.lfs")]
    planted = [key for key, _, _ in (line.partition("=") for line in planted) if key in {
        "lfs.extension.evil.clean", "lfs.customtransfer.evil.path",
        "lfs.customtransfer.evil.args", "remote.lfs.customtransfer.x.path"}]  # fmt: skip
    assert len(set(planted)) == 4
    assert all(config_overrides.runs_program(key) for key in planted)  # the guard judges them
    git(repo, "add", "big.bin")  # without the runner it runs: the test is real
    assert marker.exists()


def _lfs_pointer(data: bytes) -> str:
    """The pointer git-lfs stores for a file holding *data*, with no extension."""
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"


# Planted git-lfs extensions (`{p}`: a program that touches `pwned-<its argument>`), and whether
# git-lfs, reading them, runs it (else: fails to clean).
_LFS_PLANTS = {
    "plain": ([("lfs.extension.evil.clean", "{p} evil")], True),
    # One priority (0 unless set): git-lfs refuses to clean at all.
    "twins": ([("lfs.extension.a.clean", "{p} a"), ("lfs.extension.b.clean", "{p} b")], False),
    "no program": ([("lfs.extension.bare.priority", "3")], False),  # clean is "": it fails
    # git-lfs splits each line of `git config -l` at its first `=`: a subsection holding one
    # is its `lfs.extension.eq.clean` set to `{p}.y=eq`; a value's newline starts a line.
    "equals sign": ([("lfs.extension.eq.clean={p}.y", "eq")], True),
    "newline": ([("user.note", "x\nlfs.extension.nl.clean={p} nl")], True),
}


@pytest.mark.skipif(shutil.which("git-lfs") is None, reason="needs git-lfs (.ci/run installs it)")
@pytest.mark.parametrize("plant", _LFS_PLANTS)
def test_a_planted_git_lfs_extension_never_runs_nor_fails_a_sibling_checkpoint(
    repo: Path, tmp_path: Path, plant: str
) -> None:
    # swarm's git set a planted extension's clean program to `false` (and left alone one
    # without a program, or read as git-lfs reads it): git-lfs then failed to clean any file,
    # and a sibling task's checkpoint of an LFS file failed with it, or ran the program.
    git(repo, "lfs", "install", "--skip-repo")  # its filter, in your global config
    (repo / ".gitattributes").write_text("*.bin filter=lfs\n")
    git(repo, "add", ".gitattributes")
    git(repo, "commit", "-q", "-m", "lfs")
    sibling = tmp_path / "sibling"
    git(repo, "worktree", "add", "-q", "-b", "sibling", str(sibling))
    program = tmp_path / "evil"
    for path in (program, tmp_path / "evil.y=eq"):
        path.write_text(f'#!/bin/sh\ntouch {tmp_path}/pwned-"${{1:-eq}}"\ncat\n')
        path.chmod(0o755)
    settings, runs = _LFS_PLANTS[plant]
    for key, value in settings:
        git(repo, "config", key.format(p=program), value.format(p=program))
    (sibling / "big.bin").write_bytes(b"big\n")
    assert checkpoints.checkpoint(sibling, message="cp", author="A <a@example.com>")
    assert not list(tmp_path.glob("pwned-*"))
    assert git(sibling, "cat-file", "blob", "HEAD:big.bin") + "\n" == _lfs_pointer(b"big\n")
    # Without the runner git-lfs runs the program, or fails: the test is real.
    (sibling / "big.bin").write_bytes(b"bigger\n")
    added = subprocess.run(["git", "add", "big.bin"], cwd=sibling, capture_output=True, check=False)
    assert bool(list(tmp_path.glob("pwned-*"))) == runs
    assert (added.returncode == 0) == runs


def test_a_partial_clone_still_fetches_what_it_lacks(repo: Path, tmp_path: Path) -> None:
    git(repo, "config", "uploadpack.allowFilter", "true")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--filter=blob:none", "--no-checkout", f"file://{repo}", "clone")
    blob = git(repo, "rev-parse", "HEAD:README.md")
    assert runner.run(clone, "cat-file", "-p", blob).stdout == "hello\n"


def test_a_planted_git_proxy_never_runs(repo: Path, tmp_path: Path) -> None:
    # `core.gitProxy` runs a program for a git:// remote. git keeps the first value that
    # matches the host, the repository's config before any `-c`: swarm's was ignored.
    marker = tmp_path / "pwned"
    proxy = tmp_path / "proxy"
    proxy.write_text(f"#!/bin/sh\ntouch {marker}\n")
    proxy.chmod(0o755)
    git(repo, "config", "core.gitProxy", str(proxy))
    url = "git://127.0.0.1:1/x.git"  # nothing listens there: no proxy, no answer
    assert runner.run(repo, "ls-remote", url, check=False).returncode != 0
    runner.run(repo, "fetch", "-q", url, check=False)
    assert not marker.exists()
    subprocess.run(["git", "ls-remote", url], cwd=repo, capture_output=True, check=False)
    assert marker.exists()  # without the runner it runs: the test is real


def test_a_planted_push_signing_never_runs(repo: Path, tmp_path: Path) -> None:
    # A push certificate (`push.gpgSign`) runs the signing program, or with ssh signing the
    # command asked for the key: a program of the repository's config's choosing.
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(remote))
    git(remote, "config", "receive.certNonceSeed", "seed")  # a remote that takes certificates
    git(repo, "remote", "add", "origin", str(remote))
    marker = tmp_path / "pwned"
    git(repo, "config", "push.gpgSign", "true")
    git(repo, "config", "gpg.format", "ssh")
    git(repo, "config", "gpg.ssh.defaultKeyCommand", f"touch {marker}")
    runner.run(repo, "push", "-q", "origin", "HEAD:refs/heads/pushed")
    assert not marker.exists()
    assert git(remote, "rev-parse", "pushed") == git(repo, "rev-parse", "HEAD")
    # Without the runner it runs (the push then fails, wanting a key): the test is real.
    subprocess.run(["git", "push", "-q", "origin", "HEAD:refs/heads/again"], cwd=repo,
                   capture_output=True, check=False)  # fmt: skip
    assert marker.exists()


@pytest.mark.parametrize(
    ("key", "value", "transport"),
    [
        pytest.param("core.sshCommand", "{program}", "ssh", id="sshCommand"),
        pytest.param("core.askPass", "{program}", "http", id="askPass"),
        pytest.param("credential.helper", "!{program}", "http", id="credential-helper"),
    ],
)
def test_a_planted_transport_program_never_runs(
    repo: Path, tmp_path: Path, key: str, value: str, transport: str
) -> None:
    # What git starts to reach a remote, or to log in to it, as the repository's config names.
    marker = tmp_path / "pwned"
    program = tmp_path / "program"
    program.write_text(f"#!/bin/sh\ntouch {marker}\n")
    program.chmod(0o755)
    git(repo, "config", key, value.format(program=program))
    served = tmp_path / "served"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(served / "x.git"))
    with git_http.serving(served, "user", "secret") as server:
        url = f"{server}/x.git" if transport == "http" else "ssh://git@127.0.0.1:1/x.git"
        assert runner.run(repo, "ls-remote", url, check=False).returncode != 0
        runner.run(repo, "fetch", "-q", url, check=False)
        runner.run(repo, "push", "-q", "--", url, "HEAD:refs/heads/pushed", check=False)
        assert not marker.exists()
        # Without the runner it runs: the test is real.
        subprocess.run(["git", "ls-remote", url], cwd=repo, capture_output=True, check=False)
    assert marker.exists()


def test_users_global_filters_still_apply(repo: Path) -> None:
    git(repo, "config", "--global", "filter.upper.clean", "tr a-z A-Z")
    (repo / ".gitattributes").write_text("*.txt filter=upper\n")
    (repo / "a.txt").write_text("hello\n")
    runner.run(repo, "add", "--all")
    blob = runner.run(repo, "rev-parse", ":a.txt").stdout.strip()
    with object_reader.ObjectReader(repo) as objects:
        assert objects.read(blob) == b"HELLO\n"


def test_an_object_read_up_to_a_limit_keeps_its_head_and_the_reader_in_step(repo: Path) -> None:
    big = os.urandom(3 << 20)
    (repo / "big.bin").write_bytes(big)
    (repo / "small.txt").write_text("small\n")
    runner.run(repo, "add", "--all")
    blobs = [
        runner.run(repo, "rev-parse", f":{n}").stdout.strip() for n in ("big.bin", "small.txt")
    ]
    with object_reader.ObjectReader(repo) as objects:
        assert objects.read(blobs[0], limit=1000) == big[:1000]
        assert objects.read(blobs[1]) == b"small\n"  # the rest of the big one was dropped
        assert objects.read(blobs[1], limit=100) == b"small\n"
        assert objects.read(blobs[0]) == big


def test_errors_are_typed(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="rev-parse"):
        runner.run(repo, "rev-parse", "--verify", "no-such-ref")
    with pytest.raises(GitError, match="does not exist"):
        runner.run(tmp_path / "missing", "status")
    with object_reader.ObjectReader(repo) as objects, pytest.raises(GitError, match="missing"):
        objects.read("0" * 40)


def test_location_variables_never_redirect_git(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    top = runner.run(repo, "rev-parse", "--show-toplevel").stdout.strip()
    assert Path(top) == repo.resolve()


def test_git_gets_english_messages_no_prompt_and_the_callers_variables(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some of git's messages are matched, so a user's locale must not translate them; a
    # credential prompt would hang a run. The alias is the test's own, given on the command.
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    monkeypatch.setenv("LANGUAGE", "de")
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "1")
    monkeypatch.setenv("GIT_WORK_TREE", str(repo.parent))
    out = runner.run(repo, "-c", "alias.showenv=!env", "showenv", env={"SWARM_PROBE": "yes"})
    seen = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert (seen["LC_ALL"], seen["LANGUAGE"], seen["GIT_TERMINAL_PROMPT"]) == ("C", "C", "0")
    assert seen["SWARM_PROBE"] == "yes"
    assert "GIT_WORK_TREE" not in seen


def test_one_config_scan_answers_for_every_worktree_but_never_across_an_include(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans: list[Path] = []
    real_scan = config_overrides._scan_repository_config

    def counted(cwd: Path, state_dir: Path | None) -> tuple[tuple[str, str], ...]:
        scans.append(cwd)
        return real_scan(cwd, state_dir)

    monkeypatch.setattr(config_overrides, "_scan_repository_config", counted)
    # Equal config files of earlier tests' repos.
    monkeypatch.setattr(config_overrides, "_cache", {})
    worktrees = [tmp_path / f"wt{i}" for i in range(3)]
    for i, path in enumerate(worktrees):
        git(repo, "worktree", "add", "-q", "-b", f"b{i}", str(path))
    for path in worktrees:
        runner.run(path, "status", "--porcelain")
    assert len(scans) == 1  # identical config files: one scan for all three
    # A driver planted for one worktree only, through includeIf on its branch: each
    # worktree is scanned for itself again, and the planted program never runs.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.cfg"
    evil.write_text(f'[filter "evil"]\n\tclean = touch {marker} #\n\trequired = true\n')
    target = worktrees[2]
    git(repo, "config", "includeIf.onbranch:b2.path", str(evil))
    (target / ".gitattributes").write_text("*.txt filter=evil\n")
    (target / "a.txt").write_text("x\n")
    scans.clear()
    for path in worktrees:
        runner.run(path, "status", "--porcelain")
    runner.run(target, "add", "--all")
    assert len(scans) == 4  # with an include, before every command
    assert not marker.exists()
    (target / "a.txt").write_text("y\n")
    git(target, "add", "--all")  # without the runner the include applies: the test is real
    assert marker.exists()


def test_a_worktree_whose_git_file_is_replaced_is_scanned_anew(repo: Path, tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "side", str(wt))
    (wt / "a.txt").write_text("x\n")
    runner.run(wt, "status", "--porcelain")  # its config files located and scanned
    # An agent makes the checkout a repository of its own, with a filter in its config.
    marker = tmp_path / "pwned"
    (wt / ".git").unlink()
    git(wt, "init", "-q")
    git(wt, "config", "filter.evil.clean", f"touch {marker} #")
    git(wt, "config", "filter.evil.required", "true")
    (wt / ".gitattributes").write_text("*.txt filter=evil\n")
    runner.run(wt, "add", "--all")
    assert not marker.exists()
    (wt / "a.txt").write_text("y\n")
    git(wt, "add", "--all")  # without the runner the filter runs: the test is real
    assert marker.exists()


def test_an_included_config_file_changed_later_is_still_neutralised(
    repo: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    included = tmp_path / "included.cfg"
    included.write_text("[core]\n\tquotePath = false\n")
    git(repo, "config", "include.path", str(included))
    (repo / ".gitattributes").write_text("*.txt filter=evil\n")
    (repo / "a.txt").write_text("x\n")
    runner.run(repo, "status", "--porcelain")  # read with a harmless included file
    # Only the included file changes: the repository's own config stays byte for byte.
    included.write_text(f'[filter "evil"]\n\tclean = touch {marker} #\n\trequired = true\n')
    runner.run(repo, "add", "--all")
    assert not marker.exists()
    (repo / "a.txt").write_text("y\n")
    git(repo, "add", "--all")  # without the runner the filter runs: the test is real
    assert marker.exists()


def test_git_is_looked_up_on_the_path_each_command_is_started_with(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lookup is kept per PATH value: a git earlier on another PATH is the one started,
    # and with no git on PATH the error says so.
    real = shutil.which("git")
    assert real is not None
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    calls = tmp_path / "calls"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    head = git(repo, "rev-parse", "HEAD")
    assert runner.run(repo, "rev-parse", "HEAD").stdout.strip() == head
    assert not calls.exists()
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    assert runner.run(repo, "rev-parse", "HEAD").stdout.strip() == head
    assert calls.read_text() == "-c\n"  # the first of swarm's overrides
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BadInputError, match="git is not installed or not on PATH"):
        runner.run(repo, "rev-parse", "HEAD")


def test_swarms_git_reads_commits_not_a_commit_graph_an_agent_wrote(
    repo: Path, tmp_path: Path
) -> None:
    attack = tmp_path / "forge.py"
    attack.write_text(FORGE_GRAPH)
    argv = [sys.executable, str(attack), str(repo), str(tmp_path / "m")]
    subprocess.run(argv, cwd=repo, check=True)
    assert "+backdoor" in git(repo, "show", "main")  # what your own git now shows
    assert "backdoor" not in runner.run(repo, "show", "main").stdout
    worktree = tmp_path / "wt"
    runner.run(repo, "worktree", "add", "-q", "--no-checkout", "--detach", str(worktree), "main")
    runner.run(worktree, "read-tree", "--reset", "-u", "HEAD")
    assert (worktree / "README.md").read_text() == "hello\n"


def _gits_left() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "git"]


@pytest.mark.parametrize(
    ("planted", "args", "command"),
    [
        pytest.param(".gitignore", ["status", "--porcelain"], "git status", id="git"),
        # What git starts (a pack, a transport, an alias) is looked at too, and killed with it.
        pytest.param(
            "planted", ["-c", "alias.readpipe=!cat planted", "readpipe"], "git readpipe", id="child"
        ),
    ],
)
def test_a_git_command_stuck_opening_a_planted_pipe_is_stopped_and_names_it(
    repo: Path, monkeypatch: pytest.MonkeyPatch, planted: str, args: list[str], command: str
) -> None:
    """A FIFO where git reads (an agent's `.gitignore`) would hold `git status` for ever."""
    monkeypatch.setattr(pipes, "LOOK_SECONDS", 0.05)
    os.mkfifo(repo / planted)
    with pytest.raises(process.StuckOnPipeError) as caught:
        runner.run(repo, *args)
    assert caught.value.pipe == str(repo / planted)
    assert f"`{command}` was stopped" in str(caught.value)
    assert _gits_left() == []
    assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "cat"]


def test_a_git_command_reading_a_pipe_whose_writer_stays_silent_is_stopped(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a writer holding the FIFO open, git's open succeeds and its read waits instead."""
    monkeypatch.setattr(pipes, "LOOK_SECONDS", 0.05)
    ref = repo / ".git" / "refs" / "heads" / "silent"
    os.mkfifo(ref)
    # Opened read-write it never waits for a reader: open before git, so git's open succeeds.
    hold = "import os, sys, time; os.open(sys.argv[1], os.O_RDWR); print(flush=1); time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", hold, ref], stdout=subprocess.PIPE) as writer:
        try:
            assert writer.stdout is not None
            writer.stdout.readline()  # it holds the pipe open
            with pytest.raises(process.StuckOnPipeError) as caught:
                runner.run(repo, "for-each-ref")
            assert caught.value.pipe == str(ref)
        finally:
            writer.kill()
    assert _gits_left() == []


def test_a_process_on_no_named_pipe_or_gone_is_not_stuck() -> None:
    """Its pipes without a name (its output) and a device (/dev/null) are no named pipe."""
    with subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        try:
            assert pipes.stuck_on(proc.pid) is None
        finally:
            proc.kill()
    assert pipes.stuck_on(proc.pid) is None  # gone


def _loose(repo: Path, sha: str) -> Path:
    return repo / ".git" / "objects" / sha[:2] / sha[2:]


def test_an_object_planted_as_a_pipe_stops_the_reader_and_the_next_read_works(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard's restores read blobs through one `cat-file --batch`: a FIFO at a loose
    object's name would hold it, and the scan waiting for it, for ever."""
    monkeypatch.setattr(pipes, "LOOK_SECONDS", 0.05)
    planted = runner.run(repo, "hash-object", "-w", "--stdin", input_text="planted\n").stdout
    kept = runner.run(repo, "hash-object", "-w", "--stdin", input_text="kept\n").stdout
    loose = _loose(repo, planted.strip())
    loose.unlink()
    os.mkfifo(loose)
    with object_reader.ObjectReader(repo) as objects:
        with pytest.raises(process.StuckOnPipeError) as caught:
            objects.read(planted.strip())
        assert caught.value.pipe == str(loose)
        assert "`git cat-file` was stopped" in str(caught.value)
        assert objects.read(kept.strip()) == b"kept\n"  # started again
    assert _gits_left() == []


def test_the_object_reader_survives_its_process_ending_and_reads_objects_as_they_are(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed under it, the reader says so and starts again; a replace ref, your
    GIT_DIR and an object name with a newline change nothing it reads."""
    mine = runner.run(repo, "hash-object", "-w", "--stdin", input_text="mine\n").stdout.strip()
    forged = runner.run(repo, "hash-object", "-w", "--stdin", input_text="forged\n").stdout
    git(repo, "replace", mine, forged.strip())
    assert git(repo, "cat-file", "blob", mine) == "forged"  # your git reads the replacement
    other = repo.parent / "other"
    git(repo.parent, "init", "-q", str(other))
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    with object_reader.ObjectReader(repo) as objects:
        assert objects.read(mine) == b"mine\n"
        for proc in _gits_left():
            proc.kill()
            proc.wait()
        with pytest.raises(GitError, match="ended while reading"):
            objects.read(mine)
        assert objects.read(mine) == b"mine\n"
        with pytest.raises(GitError, match="missing"):
            objects.read(f"{mine}\nHEAD")
    assert _gits_left() == []


def test_a_git_command_reading_its_input_past_many_looks_is_left_to_finish(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a named pipe stops a command: its own input pipe, read for long, does not."""
    monkeypatch.setattr(pipes, "LOOK_SECONDS", 0.001)
    data = "x" * (64 << 20)
    sha = runner.run(repo, "hash-object", "--stdin", input_text=data).stdout.strip()
    assert sha == hashlib.sha1(b"blob %d\0" % len(data) + data.encode()).hexdigest()  # noqa: S324


def _refusing(monkeypatch: pytest.MonkeyPatch, times: int) -> list[str]:
    """Starts of git refused *times* times with EAGAIN, as under `ulimit -u` (a uid's
    processes, which tests running as root cannot hit); returns the refused subcommands."""
    real, refused = subprocess.Popen, []

    def popen(argv: list[str], *args: object, **kwargs: object) -> object:
        if len(refused) < times:
            refused.append(argv[-1])
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real(argv, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(process.subprocess, "Popen", popen)
    return refused


def test_git_refused_a_process_for_a_moment_is_started_again(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under `ulimit -u` a checkpoint's git that could not start ended the task at once.
    head = git(repo, "rev-parse", "HEAD")
    refused = _refusing(monkeypatch, 2)
    assert runner.run(repo, "rev-parse", "HEAD").stdout.strip() == head
    assert len(refused) == 2


def test_git_refused_a_process_every_time_says_so(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = _refusing(monkeypatch, 100)
    with pytest.raises(GitError) as caught:
        runner.run(repo, "rev-parse", "HEAD")
    assert str(caught.value) == (
        "git could not start (Resource temporarily unavailable): the system refused"
        f" ({proc.system_limit(errno.EAGAIN)})"
    )
    assert len(refused) == 5  # tried again 4 times


def test_a_stopped_git_command_ends_what_it_started_that_holds_its_pipes(
    repo: Path, tmp_path: Path
) -> None:
    # Git ends on SIGTERM; what it started (a transport, a helper: here an alias's program)
    # may not, and holds git's output pipes: the stop waited on it for as long as it ran.
    pid_file = tmp_path / "held.pid"
    # Git kills its alias's shell on SIGTERM; the program that shell started lives on.
    alias = f"alias.hold=!sleep 600 & echo $! > {pid_file}; wait"
    stop = threading.Event()
    ended: list[BaseException] = []

    def call() -> None:
        try:
            process.execute_bytes(repo, ["-c", alias, "hold"], check=False, stop=stop)
        except BaseException as exc:  # what the call ended with, for the test
            ended.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert thread.is_alive(), f"ended before its alias's program started: {ended}"
        assert time.monotonic() < deadline, "timed out waiting for the alias's program"
        time.sleep(0.02)
    held = psutil.Process(int(pid_file.read_text()))
    try:
        stop.set()
        thread.join(timeout=120)  # a bound on a hang, not a timing: it ends in seconds
        assert not thread.is_alive(), "the stopped command still waits for what git started"
        assert [type(exc) for exc in ended] == [process.StoppedError]
        assert not held.is_running() or held.status() == psutil.STATUS_ZOMBIE
    finally:
        with contextlib.suppress(psutil.Error):
            held.kill()


@pytest.mark.timeout(120)  # the stop waited for ever on what escaped git's tree
def test_a_stopped_git_command_returns_though_what_escaped_its_tree_holds_its_pipes(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process git's wrapper double-forked into a session of its own is in no tree the stop
    # can find, and holds git's output pipes: the stop lets go of them after a grace.
    pid_file = tmp_path / "escaped.pid"
    pid = shlex.quote(str(pid_file))
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        GIT_SUBCOMMAND
        + 'if [ "$sub" = hold ]; then\n'
        f"  ( setsid sleep 600 & echo $! > {pid}.tmp; mv {pid}.tmp {pid} )\n"
        "  exec sleep 600\n"
        "fi\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    stop = threading.Event()
    stopper = threading.Thread(
        target=lambda: (wait_for(pid_file.exists, what="the escaped process"), stop.set()),
        daemon=True,
    )
    stopper.start()
    try:
        with pytest.raises(process.StoppedError, match="`git hold` was stopped"):
            process.execute_bytes(repo, ["hold"], check=False, stop=stop)
        escaped = psutil.Process(int(pid_file.read_text()))
        assert escaped.is_running()  # it held the pipes all along: nothing ended it
    finally:
        if pid_file.exists():
            with contextlib.suppress(psutil.Error):
                psutil.Process(int(pid_file.read_text())).kill()


# A process with threads, as a Ray worker is, that starts a tied git clone and waits for it.
TIED_CLONE = """\
import sys, threading
from pathlib import Path
from worktree_swarm.git import runner
threading.Thread(target=threading.Event().wait, daemon=True).start()
runner.run(Path(sys.argv[1]), "clone", "x", "y", tied=True)
"""


def test_a_tied_git_is_ended_when_the_process_that_started_it_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ray actor's clone: Ray SIGKILLs the actor's worker, its git must not run on. The
    # parent is a real process with threads (as a worker is) that starts a tied git, which
    # blocks in a wrapper until the parent is gone.
    pid_file = tmp_path / "git.pid"
    hang = f'if [ "$sub" = clone ]; then echo "$$" > {pid_file}; exec sleep 600; fi\n'
    git_first_on_path(
        tmp_path, monkeypatch, lambda real: f'{GIT_SUBCOMMAND}{hang}exec {real} "$@"\n'
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            TIED_CLONE,
            str(tmp_path),
        ],
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="git")
        tied = psutil.Process(int(pid_file.read_text()))
        ignored = int(
            Path(f"/proc/{tied.pid}/status").read_text().split("SigIgn:")[1].split()[0], 16
        )
        assert not ignored & (1 << (int(signal.SIGPIPE) - 1))  # git's default, not Python's
        parent.kill()
        parent.wait()
        tied.wait(timeout=60)  # raises if it runs on
    finally:
        parent.kill()
        parent.wait()


def test_a_git_command_given_input_and_a_stop_gets_all_of_it_over_many_looks(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused a stop, a guard's walk of the whole history (its tips on stdin) could not be cut
    # short by a stop signal; `communicate` sends input on its first call only.
    monkeypatch.setattr(process, "_STOP_POLL", 0.001)
    data = b"x" * (16 << 20)  # far more than a pipe holds: written over many looks
    done = process.execute_bytes(
        repo, ["hash-object", "--stdin"], check=True, input_bytes=data, stop=threading.Event()
    )
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324
    assert done.stdout.decode().strip() == blob
