"""The session files of the Ray executor, carried to a clone at another path, with the real CLI.

Claude Code finds a session for ``--resume`` by the working directory it was made in; a later
attempt of a task on another node runs in a clone at another path. Here the real CLI (against
the local Anthropic stub) makes a session in one clone, its config dir is packed as a node
packs it, unpacked for a clone at another path, and ``--resume`` there carries the
conversation on.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from tests import anthropic_stub as stub_module
from tests.anthropic_stub import AnthropicStub, Text, ToolUse
from tests.conftest import make_repo
from tests.test_claude_e2e import CLAUDE, assistant_tool_calls, claude
from worktree_swarm.run import ray_session

anthropic_stub = stub_module.anthropic_stub  # the fixture, visible to this module's tests


@pytest.mark.slow
@pytest.mark.skipif(CLAUDE is None, reason="Claude Code CLI not installed (see .ci/run)")
def test_a_session_packed_on_one_node_resumes_in_a_clone_elsewhere(
    tmp_path: Path, anthropic_stub: AnthropicStub
) -> None:
    first_clone = make_repo(tmp_path / "node-a" / "runs" / "r1" / "t1" / "work")
    anthropic_stub.queue(
        ToolUse(name="Write", input={"file_path": str(first_clone / "a.txt"), "content": "1\n"}),
        Text(text="Wrote a.txt."),
    )
    first = claude(first_clone, anthropic_stub, "Create a.txt").result
    config = first_clone.parent / "claude-config"  # where claude() keeps it
    (config / ".credentials.json").write_text('{"claudeAiOauth": {"accessToken": "node-a"}}')
    state = ray_session.pack(config, first_clone, since=None)
    assert state is not None
    with tarfile.open(fileobj=io.BytesIO(state.archive)) as tar:
        names = tar.getnames()
    # The sign-in and the account (also its backups) stay on the node.
    assert any(name.startswith("projects/") for name in names)
    assert not [n for n in names if ".credentials.json" in n or ".claude.json" in n], names
    assert ray_session.pack(config, first_clone, since=state.fingerprint) is None  # unchanged

    # The next attempt: another node, another path, the branch's files but no session.
    second_clone = tmp_path / "node-b-elsewhere" / "runs" / "r1" / "t1" / "work"
    second_clone.parent.mkdir(parents=True)
    shutil.copytree(first_clone, second_clone)
    shutil.rmtree(first_clone.parent)
    fresh = second_clone.parent / "claude-config"
    assert ray_session.unpack(state, fresh, second_clone)
    anthropic_stub.queue(
        ToolUse(name="Write", input={"file_path": str(second_clone / "b.txt"), "content": "2\n"}),
        Text(text="Wrote b.txt too."),
    )
    before = len(anthropic_stub.agent_requests())
    done = claude(second_clone, anthropic_stub, "Now b.txt", "--resume", first["session_id"])

    assert done.exit_code == 0, done.stdout + done.stderr
    assert done.result["session_id"] == first["session_id"]
    resumed = anthropic_stub.agent_requests()[before]
    assert any("Create a.txt" in text for text in resumed.user_texts())
    assert assistant_tool_calls(resumed.body) == ["Write"]  # the first attempt's call
    assert (second_clone / "b.txt").read_text() == "2\n"


def test_a_session_is_not_carried_to_a_path_too_long_for_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "projects" / ray_session.project_name(str(tmp_path / "a"))).mkdir(parents=True)  # type: ignore[operator]
    (config / "projects" / "x").mkdir()
    (config / "projects" / "x" / "s.jsonl").write_text("{}\n")
    state = ray_session.pack(config, tmp_path / "a", since=None)
    assert state is not None
    deep = tmp_path / ("d" * 120) / ("e" * 120)
    assert not ray_session.unpack(state, tmp_path / "fresh", deep)
    assert not (tmp_path / "fresh").exists()
