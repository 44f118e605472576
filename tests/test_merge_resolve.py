"""`swarm merge --resolve`: what counts as resolved, and what a resolver changed besides."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import agent_python, git, make_repo
from tests.mergekit import (
    LINES,
    RUN_ID,
    Brancher,
    conflicting,
    edit,
    merge_results,
    record_run,
)
from tests.test_filtered_objects import PLAIN, ROT13, stored_bytes
from tests.test_run import status_json, swarm

BRANCH = "swarm/integration-" + RUN_ID


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    made = make_repo(
        tmp_path / "repo",
        {"f.txt": LINES, "h.txt": "h\n", "b.bin": "\0binary\n", "README.md": "mine\n"},
    )
    (made / "l").symlink_to("start")
    git(made, "add", "l")
    git(made, "commit", "-q", "-m", "a symlink")
    return made


@pytest.fixture
def brancher(repo: Path) -> Iterator[Brancher]:
    b = Brancher(repo)
    yield b
    b.close()


def committed(brancher: Brancher, name: str, start: str, change: Callable[[Path], None]) -> str:
    """Branch *name* at a commit on *start* that *change* (given the worktree) made."""
    wt = brancher.scratch
    git(wt, "checkout", "-q", "--detach", "--force", start)
    change(wt)
    git(wt, "add", "-A")
    git(wt, "commit", "-q", "-m", f"work on {name}")
    sha = git(wt, "rev-parse", "HEAD")
    git(brancher.repo, "branch", "-f", name, sha)
    return sha


def _append(path: Path, data: bytes) -> None:
    path.write_bytes(path.read_bytes() + data)


def _relink(path: Path, to: str) -> None:
    path.unlink()
    path.symlink_to(to)


def _directory(wt: Path) -> None:
    (wt / "x").mkdir()
    (wt / "x" / "y").write_text("a file in a directory\n")


# Conflicts git records without text markers: (first's change, second's, the conflicted path).
NO_MARKERS: dict[str, tuple[Callable[[Path], object], Callable[[Path], object], str]] = {
    "binary": (
        lambda wt: _append(wt / "b.bin", b"BASE\n"),
        lambda wt: _append(wt / "b.bin", b"TASK\n"),
        "b.bin",
    ),
    "modify-delete": (
        lambda wt: git(wt, "rm", "-q", "h.txt"),
        lambda wt: (wt / "h.txt").write_text("h edited\n"),
        "h.txt",
    ),
    "file-directory": (lambda wt: (wt / "x").write_text("a file\n"), _directory, "x"),
    "symlink": (
        lambda wt: _relink(wt / "l", "first"),
        lambda wt: _relink(wt / "l", "second"),
        "l",
    ),
}


def no_markers_run(repo: Path, brancher: Brancher, case: str, resolver: str) -> None:
    """Tasks first and second conflicting as *case* says; their agent runs *resolver*."""
    first, second, _path = NO_MARKERS[case]
    base = git(repo, "rev-parse", "HEAD")
    committed(brancher, "swarm/first", base, first)
    committed(brancher, "swarm/second", base, second)
    agent = repo.parent / "resolver.py"
    agent.write_text("import subprocess, sys\n" + resolver)
    record_run(
        repo,
        [("first", base), ("second", base)],
        base=base,
        agent=[*agent_python(), str(agent), "{prompt_file}"],
    )


@pytest.mark.parametrize("strategy", ["merge", "squash"])
@pytest.mark.parametrize("case", list(NO_MARKERS))
def test_a_conflict_without_markers_that_its_resolver_left_as_it_was_is_not_resolved(
    repo: Path, brancher: Brancher, case: str, strategy: str
) -> None:
    # The resolver exits 0 having done nothing: git's side of the target (or the file it
    # parked beside a directory) was committed as the resolution, the task's change lost.
    no_markers_run(repo, brancher, case, "")

    out = swarm(repo, "merge", "--resolve", "--strategy", strategy, "--json")

    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert (report["merged"], report["conflicted"]) == (["first"], ["second"])
    path = NO_MARKERS[case][2]
    assert report["results"][1]["reason"] == (
        f"conflicts with {BRANCH} in {path};"
        f" the agent left {path} as the merge stopped (neither changed nor staged)"
    )
    assert git(repo, "rev-parse", BRANCH) == report["results"][0]["commit"]
    assert git(Path(report["target"]["worktree"]), "status", "--porcelain") == ""
    assert merge_results(repo) == {"first": "merged", "second": "conflicted"}


# A resolver that keeps one side as the prompt tells it: (its code, b.bin or h.txt after).
KEEP_ONE_SIDE = {
    "binary": (
        (
            "subprocess.run(['git', 'checkout', '--theirs', '--', 'b.bin'], check=True)\n"
            "subprocess.run(['git', 'add', '--', 'b.bin'], check=True)\n"
        ),
        "\0binary\nTASK\n",
    ),
    "modify-delete": ("subprocess.run(['git', 'rm', '-q', '--', 'h.txt'], check=True)\n", None),
}


@pytest.mark.parametrize("case", list(KEEP_ONE_SIDE))
def test_a_resolver_keeps_one_side_of_a_conflict_without_markers_by_staging_it(
    repo: Path, brancher: Brancher, case: str
) -> None:
    code, after = KEEP_ONE_SIDE[case]
    no_markers_run(repo, brancher, case, code)

    out = swarm(repo, "merge", "--resolve", "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["merged"] == ["first", "second"]
    path = NO_MARKERS[case][2]
    assert report["results"][1]["reason"] == f"conflicts in {path} resolved by its agent"
    files = git(repo, "ls-tree", "--name-only", BRANCH).split()
    if after is None:
        assert path not in files
    else:
        assert git(repo, "cat-file", "blob", f"{BRANCH}:{path}") + "\n" == after
    prompt = (repo / ".git/swarm/runs" / RUN_ID / "merge/resolve-second.md").read_text()
    assert "`git checkout --ours -- FILE` (or `--theirs`) and `git add -- FILE`" in prompt
    assert "`git rm -- FILE`" in prompt


# Keeps both sides of f.txt's conflict, markers of any length or style removed, then runs
# its extra code.
KEEP_BOTH = """
import pathlib, re, subprocess, sys
text = pathlib.Path('f.txt').read_text()
pathlib.Path('f.txt').write_text(re.sub(r'^[<=>|]{5,}.*\\n', '', text, flags=re.M))
"""

# Resolvers that leave markers git wrote where .gitattributes or the config made them
# other than 7 characters of <, = and >: (the repository's .gitattributes, the resolver).
MARKERS_LEFT = {
    "longer": (
        "f.txt conflict-marker-size=12\n",
        "subprocess.run(['git', 'add', '-A'], check=True)\n",
    ),
    "shorter": (
        "*.txt conflict-marker-size=5\n",
        "subprocess.run(['git', 'add', '-A'], check=True)\n",
    ),
    # Past an int, git's atoi keeps the low 32 bits (12 here): past Python's pattern limits,
    # the size was an internal error.
    "past an int": (
        f"f.txt conflict-marker-size={2**40 + 12}\n",
        "subprocess.run(['git', 'add', '-A'], check=True)\n",
    ),
    "diff3 base": (  # the lines of the base's side kept with its marker
        "",
        (
            "import pathlib, re\ntext = pathlib.Path('f.txt').read_text()\n"
            "pathlib.Path('f.txt').write_text(re.sub(r'^[<=>]{7}.*\\n', '', text, flags=re.M))\n"
        ),
    ),
}


@pytest.mark.long
@pytest.mark.parametrize("case", list(MARKERS_LEFT))
def test_a_resolution_with_conflict_markers_of_another_size_or_style_lands_nothing(
    repo: Path, brancher: Brancher, case: str
) -> None:
    attributes, resolver = MARKERS_LEFT[case]
    if attributes:
        (repo / ".gitattributes").write_text(attributes)
        git(repo, "add", ".gitattributes")
        git(repo, "commit", "-q", "-m", "marker size")
    if case == "diff3 base":
        git(repo, "config", "merge.conflictStyle", "diff3")
    agent = repo.parent / "resolver.py"
    agent.write_text("import subprocess, sys\n" + resolver)
    conflicting(repo, brancher, agent)

    out = swarm(repo, "merge", "--resolve", "--json")

    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert (report["merged"], report["conflicted"]) == (["first"], ["second"])
    assert report["results"][1]["reason"] == (
        f"conflicts with {BRANCH} in f.txt; conflict markers left in f.txt"
    )
    assert git(repo, "rev-parse", BRANCH) == report["results"][0]["commit"]


@pytest.mark.long
def test_a_resolution_may_hold_a_heading_underlined_with_equals_signs(
    repo: Path, brancher: Brancher
) -> None:
    agent = repo.parent / "resolver.py"
    agent.write_text(
        KEEP_BOTH + "pathlib.Path('f.txt').write_text('Title\\n' + '=' * 10 + '\\n' + "
        "pathlib.Path('f.txt').read_text())\n"
    )
    conflicting(repo, brancher, agent)

    out = swarm(repo, "merge", "--resolve", "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    merged = git(repo, "show", f"{BRANCH}:f.txt").splitlines()
    assert merged[:2] == ["Title", "=" * 10]
    assert merged[6:8] == ["five first", "five second"]


def test_what_a_resolver_changed_besides_the_conflicts_is_named_in_its_result(
    repo: Path, brancher: Brancher
) -> None:
    # Committed with the merge (a resolution may need an edit elsewhere), named for review.
    agent = repo.parent / "resolver.py"
    agent.write_text(
        KEEP_BOTH + "with open('README.md', 'a') as f:\n    f.write('injected\\n')\n"
        "pathlib.Path('stray.o').write_text('junk\\n')\n"
    )
    conflicting(repo, brancher, agent, second={"s.txt": "s\n"})

    out = swarm(repo, "merge", "--resolve", "--json")

    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["merged"] == ["first", "second"]
    assert report["results"][1]["reason"] == (
        "conflicts in f.txt resolved by its agent; its agent also changed README.md, stray.o"
    )
    assert git(repo, "show", f"{BRANCH}:README.md") == "mine\ninjected"
    assert git(repo, "show", f"{BRANCH}:stray.o") == "junk"
    detail = status_json(repo)["second"]["merge_detail"]
    assert str(detail).endswith("; its agent also changed README.md, stray.o")


def test_a_resolver_gets_a_copy_of_your_claude_sign_in_only_while_it_runs(
    repo: Path, brancher: Brancher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The resolver is the task's agent, a Claude one by default: it was given a copy of your
    # sign-in (access and refresh token) under .git/swarm, and nothing ever took it out.
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN", raising=False)
    sign_in = Path.home() / ".claude" / ".credentials.json"
    sign_in.parent.mkdir(exist_ok=True)
    oauth = {"accessToken": "at-of-the-user", "refreshToken": "rt-of-the-user"}
    sign_in.write_text(json.dumps({"claudeAiOauth": oauth | {"expiresAt": 4102444800000}}))
    seen = tmp_path / "seen"
    resolver = tmp_path / "resolver.py"
    resolver.write_text(
        "import os, pathlib, re\n"
        f"copy = pathlib.Path(os.environ['CLAUDE_CONFIG_DIR']) / '.credentials.json'\n"
        f"pathlib.Path({str(seen)!r}).write_text(str(copy.is_file()))\n"
        "text = pathlib.Path('f.txt').read_text()\n"
        "pathlib.Path('f.txt').write_text(re.sub(r'^(<<<<<<<|=======|>>>>>>>).*\\n', '', text,"
        " flags=re.M))\n"
    )
    conflicting(repo, brancher, resolver, profile="claude")
    out = swarm(repo, "merge", "--resolve", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["merged"] == ["first", "second"]
    assert seen.read_text() == "True"  # it had one while it ran
    assert list((repo / ".git" / "swarm").rglob(".credentials.json")) == []
    assert sign_in.is_file()  # yours stays


def test_a_resolution_holding_a_secrets_value_lands_nothing_and_is_in_no_object(
    repo: Path, brancher: Brancher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The resolver's files were staged by a plain `git add --all`: one holding the value of a
    # secret was hashed into your store (and committed with the merge) before any look.
    key = "sk-ant-api03-" + "r" * 30
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)
    agent = repo.parent / "resolver.py"
    agent.write_text(KEEP_BOTH + f"pathlib.Path('env.txt').write_text('KEY={key}\\n')\n")
    conflicting(repo, brancher, agent)

    out = swarm(repo, "merge", "--resolve", "--json")

    report = json.loads(out.stdout)
    assert report["merged"] == ["first"], out.stdout + out.stderr
    assert "wrote the value of a secret into env.txt" in report["results"][1]["reason"]
    assert key not in out.stdout
    assert key.encode() not in stored_bytes(repo)


def test_a_resolution_holding_a_file_over_max_file_lands_nothing_and_is_in_no_object(
    repo: Path, brancher: Brancher
) -> None:
    # The resolver's files were merged whatever their size: one past the run's max_file (a
    # GitHub push refuses one over 100 MiB) went onto the integration branch.
    agent = repo.parent / "resolver.py"
    agent.write_text(KEEP_BOTH + "pathlib.Path('big.bin').write_bytes(b'BigOne' * 1000)\n")
    conflicting(repo, brancher, agent, max_file=4096)

    out = swarm(repo, "merge", "--resolve", "--json")

    report = json.loads(out.stdout)
    assert report["merged"] == ["first"], out.stdout + out.stderr
    assert "wrote files over max_file (big.bin (5.9K))" in report["results"][1]["reason"]
    assert b"BigOne" * 1000 not in stored_bytes(repo)


def _encrypted(repo: Path) -> None:
    """Commit secret.txt through a rot13 filter *repo*'s config defines (swarm never runs it)."""
    git(repo, "config", "filter.crypt.clean", ROT13)
    git(repo, "config", "filter.crypt.smudge", ROT13)
    (repo / ".gitattributes").write_text("secret.txt filter=crypt\n")
    (repo / "secret.txt").write_text("old\n")
    git(repo, "add", ".gitattributes", "secret.txt")
    git(repo, "commit", "-q", "-m", "encrypted")


def test_a_resolution_of_a_file_under_a_filter_swarm_does_not_run_lands_nothing(
    repo: Path, brancher: Brancher
) -> None:
    # swarm's git switches off the filters your repository's config defines (git-crypt's):
    # the resolver's file written in the clear was staged as it was and merged unencrypted.
    _encrypted(repo)
    agent = repo.parent / "resolver.py"
    agent.write_text(KEEP_BOTH + f"pathlib.Path('secret.txt').write_text('{PLAIN}\\n')\n")
    conflicting(repo, brancher, agent)

    out = swarm(repo, "merge", "--resolve", "--json")

    report = json.loads(out.stdout)
    assert report["merged"] == ["first"], out.stdout + out.stderr
    reason = report["results"][1]["reason"]
    assert "changed files under a filter swarm's git does not run" in reason
    assert "(secret.txt (filter crypt))" in reason
    assert PLAIN.encode() not in stored_bytes(repo)
    assert git(repo, "rev-parse", f"{BRANCH}:secret.txt") == git(
        repo, "rev-parse", "HEAD:secret.txt"
    )


def test_a_resolver_keeping_one_side_of_a_file_under_a_filter_lands_it(
    repo: Path, brancher: Brancher
) -> None:
    # Both tasks changed your encrypted file: keeping one side's version (as your git wrote
    # it through the filter) is no file in the clear, and the merge lands.
    _encrypted(repo)
    base = git(repo, "rev-parse", "HEAD")
    brancher.branch("swarm/first", base, {"f.txt": edit(5, "five first"), "secret.txt": "one\n"})
    brancher.branch("swarm/second", base, {"f.txt": edit(5, "five second"), "secret.txt": "two\n"})
    agent = repo.parent / "resolver.py"
    agent.write_text(
        KEEP_BOTH
        + "subprocess.run(['git', 'checkout', '--theirs', '--', 'secret.txt'], check=True)\n"
        "subprocess.run(['git', 'add', '--', 'secret.txt'], check=True)\n"
    )
    record_run(
        repo, [("first", base), ("second", base)], base=base,
        agent=[*agent_python(), str(agent), "{prompt_file}"],
    )  # fmt: skip

    out = swarm(repo, "merge", "--resolve", "--json")

    report = json.loads(out.stdout)
    assert report["merged"] == ["first", "second"], out.stdout + out.stderr
    theirs = git(repo, "rev-parse", "swarm/second:secret.txt")
    assert git(repo, "rev-parse", f"{BRANCH}:secret.txt") == theirs


def test_a_resolver_leaving_a_link_where_a_filtered_file_was_lands_nothing(
    repo: Path, brancher: Brancher
) -> None:
    # The file was hashed to be compared with the sides': a link to a directory there made
    # `git hash-object` fail, and `swarm merge` ended on an internal error.
    _encrypted(repo)
    agent = repo.parent / "resolver.py"
    agent.write_text(
        KEEP_BOTH + "pathlib.Path('secret.txt').unlink()\n"
        "pathlib.Path('secret.txt').symlink_to(pathlib.Path('/').resolve())\n"
    )
    conflicting(repo, brancher, agent)

    out = swarm(repo, "merge", "--resolve", "--json")

    report = json.loads(out.stdout)
    assert report["merged"] == ["first"], out.stdout + out.stderr
    assert "(secret.txt (filter crypt))" in report["results"][1]["reason"]
