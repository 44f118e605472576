"""An agent's session files packed on one node, unpacked on another: real dirs and archives."""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path

import pytest

from worktree_swarm.infra import redact
from worktree_swarm.run import ray_session
from worktree_swarm.run.ray_session import SessionState

ANTHROPIC_KEY = "sk-ant-api03-" + "Zq7" * 12
NODE_SECRET = "node-deploy-value-4f2a9c"  # noqa: S105 - the value of a secret-named variable on the node


def claude_config(config_dir: Path, clone: Path) -> Path:
    """A config dir as Claude Code leaves it after a session in *clone*; the transcript."""
    name = ray_session.project_name(str(clone.resolve()))
    assert name is not None
    project = config_dir / "projects" / name
    project.mkdir(parents=True)
    transcript = project / "sess-1.jsonl"
    lines = [
        {"type": "user", "cwd": str(clone.resolve()), "text": f"edit {clone.resolve()}/app.py"},
        {"type": "tool", "output": f"ANTHROPIC_API_KEY={ANTHROPIC_KEY} and {NODE_SECRET}"},
    ]
    transcript.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (config_dir / "settings.json").write_text('{"theme": "dark"}\n')
    (config_dir / ".credentials.json").write_text(json.dumps({"token": ANTHROPIC_KEY}))
    (config_dir / ".claude.json").write_text('{"userID": "someone"}\n')
    (config_dir / "backups").mkdir()
    (config_dir / "backups" / ".claude.json.backup.123").write_text('{"userID": "someone"}\n')
    (project / "sess-1.jsonl.lock").write_text("")
    outside = config_dir.parent / "outside.txt"
    outside.write_text("not the agent's\n")
    (config_dir / "linked.jsonl").symlink_to(outside)
    return transcript


@pytest.fixture
def node_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's environment holds a secret: the redactor is rebuilt from it."""
    monkeypatch.setenv("NODE_DEPLOY_TOKEN", NODE_SECRET)
    monkeypatch.setattr(redact, "_current", None)


def members(state: SessionState) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(state.archive), mode="r:gz") as tar:
        found = {}
        for member in tar.getmembers():
            source = tar.extractfile(member)
            assert source is not None
            found[member.name] = source.read()
        return found


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.usefixtures("node_env")
def test_pack_leaves_sign_in_locks_and_links_out_and_redacts_secrets(tmp_path: Path) -> None:
    clone = tmp_path / "node-a" / "clone"
    clone.mkdir(parents=True)
    config = tmp_path / "node-a" / "agent-config"
    claude_config(config, clone)

    state = ray_session.pack(config, clone, since=None)

    assert state is not None
    assert state.clone == str(clone.resolve())
    name = ray_session.project_name(state.clone)
    found = members(state)
    assert set(found) == {f"projects/{name}/sess-1.jsonl", "settings.json"}
    text = found[f"projects/{name}/sess-1.jsonl"].decode()
    assert ANTHROPIC_KEY not in text
    assert NODE_SECRET not in text
    assert text.count(redact.REDACTED) == 2
    assert str(clone.resolve()) in text  # the path is rewritten on unpack, not here
    # Nothing changed since: nothing to send.
    assert ray_session.pack(config, clone, since=state.fingerprint) is None
    (config / "settings.json").write_text('{"theme": "light"}\n')
    again = ray_session.pack(config, clone, since=state.fingerprint)
    assert again is not None
    assert again.fingerprint != state.fingerprint


def test_pack_of_an_empty_or_oversized_config_dir_is_none(tmp_path: Path) -> None:
    config = tmp_path / "agent-config"
    config.mkdir()
    (config / ".credentials.json").write_text("{}")  # left out: as good as empty
    assert ray_session.pack(config, tmp_path, since=None) is None
    with (config / "projects.jsonl").open("wb") as fh:  # sparse: no real disk needed
        fh.truncate(ray_session.LIMIT + 1)
    assert ray_session.pack(config, tmp_path, since=None) is None


@pytest.mark.usefixtures("node_env")
def test_unpack_on_another_node_renames_the_project_and_rewrites_the_path(tmp_path: Path) -> None:
    old_clone = tmp_path / "node-a" / "clone"
    old_clone.mkdir(parents=True)
    old_config = tmp_path / "node-a" / "agent-config"
    claude_config(old_config, old_clone)
    state = ray_session.pack(old_config, old_clone, since=None)
    assert state is not None
    new_clone = tmp_path / "node-b" / "runs" / "r1" / "clone"
    new_clone.mkdir(parents=True)
    new_config = tmp_path / "node-b" / "agent-config"

    assert ray_session.unpack(state, new_config, new_clone) is True

    new_name = ray_session.project_name(str(new_clone.resolve()))
    assert tree(new_config) == {f"projects/{new_name}/sess-1.jsonl", "settings.json"}
    transcript = new_config / "projects" / str(new_name) / "sess-1.jsonl"
    text = transcript.read_text()
    assert str(old_clone.resolve()) not in text
    first = json.loads(text.splitlines()[0])
    assert first["cwd"] == str(new_clone.resolve())
    assert first["text"] == f"edit {new_clone.resolve()}/app.py"
    assert redact.REDACTED in text
    assert stat.S_IMODE(transcript.stat().st_mode) == 0o600
    assert stat.S_IMODE(new_config.stat().st_mode) == 0o700


def test_unpack_writes_only_plain_files_inside_the_config_dir(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    clone.mkdir()
    absolute = tmp_path / "absolute-escape.txt"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("../escape.txt", str(absolute), "projects/../../dotdot.txt", "ok.txt"):
            data = f"{name}\n".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = str(tmp_path / "target.txt")
        tar.addfile(link)
        directory = tarfile.TarInfo("empty-dir")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue()), mode="r:gz") as tar:
        assert str(absolute) in tar.getnames()  # the archive really holds an absolute name
    state = SessionState(clone=str(clone.resolve()), fingerprint="f", archive=buffer.getvalue())
    config = tmp_path / "nest" / "agent-config"
    before = tree(tmp_path)

    assert ray_session.unpack(state, config, clone) is True

    assert tree(tmp_path) - before == {"nest/agent-config/ok.txt"}
    assert not absolute.exists()
    assert not (tmp_path / "nest" / "escape.txt").exists()
    assert [p.name for p in config.iterdir()] == ["ok.txt"]


@pytest.mark.parametrize("long_side", ["old", "new"])
def test_a_clone_path_past_the_project_name_limit_is_not_carried(
    tmp_path: Path, long_side: str
) -> None:
    short = tmp_path / "clone"
    long = tmp_path / ("c" * 210)
    short.mkdir()
    long.mkdir()
    assert ray_session.project_name(str(long.resolve())) is None
    old, new = (long, short) if long_side == "old" else (short, long)
    config_a = tmp_path / "a"
    config_a.mkdir()
    (config_a / "settings.json").write_text("{}\n")
    state = ray_session.pack(config_a, old, since=None)
    assert state is not None
    config_b = tmp_path / "b"

    assert ray_session.unpack(state, config_b, new) is False
    assert not config_b.exists()


def test_save_load_forget_round_trip(tmp_path: Path) -> None:
    directory = tmp_path / ".git" / "swarm" / "sessions" / "t1"
    assert ray_session.load(directory) is None
    state = SessionState(clone="/node/clone", fingerprint="abc", archive=b"\x1f\x8bnot-real")

    ray_session.save(directory, state, session_id="sess-1")

    assert ray_session.load(directory) == (state, "sess-1")
    assert {p.name for p in directory.iterdir()} == {
        ray_session.ARCHIVE,
        ray_session.META,
    }  # no .partial
    assert stat.S_IMODE((directory / ray_session.ARCHIVE).stat().st_mode) == 0o600
    newer = SessionState(clone="/node/clone", fingerprint="def", archive=b"newer")
    ray_session.save(directory, newer, session_id=None)
    assert ray_session.load(directory) == (newer, None)
    (directory / ray_session.META).write_text("{not json")
    assert ray_session.load(directory) is None

    ray_session.forget(directory)

    assert not directory.exists()
    assert ray_session.load(directory) is None
    ray_session.forget(directory)  # already gone: no error
