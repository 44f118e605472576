"""An agent's session files, carried from the node of one attempt to the node of the next.

Agents that resume a session (``claude --resume <id>``) keep it in the task's private config dir
(``CLAUDE_CONFIG_DIR``), which with the Ray executor is on the attempt's node. The node packs
that directory (:func:`pack`: sign-in files left out, secrets redacted with the node's
environment, so neither travels through Ray), the coordinator keeps the newest pack in the
run's directory (:func:`save`, :func:`load`: in ``.git``, never in a commit or on the remote),
and the node of a later attempt unpacks it into its own config dir (:func:`unpack`).

Claude Code files a session under ``projects/<cwd with every non-alphanumeric character as
->/`` and records that working directory in it; a clone on another node has another path, so
:func:`unpack` renames that directory and rewrites the old path in the files, and the session
reads as if made in the new clone (Claude Code 2.1.330 also resumes a session filed under
another directory; this does not depend on it). A path longer than the CLI's 200-character
limit gets a hash suffix swarm cannot reproduce: then the session is not carried (the attempt
starts a fresh one).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from worktree_swarm.infra import redact

# The profiles whose sessions live in the task's config dir. Codex keeps its sessions in
# ``$CODEX_HOME/sessions`` and Gemini CLI in ``~/.gemini/tmp/<hash of the project path>``,
# both beside the user's login in a directory every task on the node shares; aider has no
# sessions. Their attempts on another node start fresh sessions.
CARRIED = frozenset({"claude"})
# Beyond this a session is not carried (a fresh session is started instead).
LIMIT = 64 * 2**20
# Sign-in and account files (provisioned on each node) and their backups
# (``backups/.claude.json.backup.<ms>``), and locks.
_LEFT_OUT = (".credentials.json", ".claude.json")
_PROJECT_NAME_LIMIT = 200
ARCHIVE = "session.tar.gz"
META = "session.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionState:
    """A packed config dir: where its clone was, a fingerprint of its files, the archive."""

    clone: str
    fingerprint: str
    archive: bytes


def project_name(cwd: str) -> str | None:
    """The name Claude Code gives the sessions directory of *cwd*; None past its limit."""
    name = re.sub(r"[^a-zA-Z0-9]", "-", cwd)
    return name if len(name) <= _PROJECT_NAME_LIMIT else None


def _files(config_dir: Path) -> list[Path]:
    found = []
    for dirpath, _dirnames, filenames in os.walk(config_dir):
        for name in filenames:
            path = Path(dirpath) / name
            if name.startswith(_LEFT_OUT) or name.endswith(".lock") or not path.is_file():
                continue
            if path.is_symlink():
                continue
            found.append(path)
    return sorted(found)


def pack(config_dir: Path, clone: Path, *, since: str | None) -> SessionState | None:
    """*config_dir* packed on its node; None when empty, unchanged since *since*, or too big."""
    files = _files(config_dir)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(f"{path.relative_to(config_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    fingerprint = digest.hexdigest()
    if fingerprint == since or sum(p.stat().st_size for p in files) > LIMIT:
        return None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in files:
            try:
                data = path.read_bytes()
            except OSError:  # removed meanwhile by the agent
                continue
            # Transcripts hold what the agent saw: no secret of this node leaves it.
            text = data.decode("utf-8", errors="surrogateescape")
            data = redact.redact(text).encode("utf-8", errors="surrogateescape")
            info = tarfile.TarInfo(path.relative_to(config_dir).as_posix())
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    # The path the agent saw as its working directory (Claude files sessions by it).
    where = str(clone.resolve())
    return SessionState(clone=where, fingerprint=fingerprint, archive=buffer.getvalue())


def unpack(state: SessionState, config_dir: Path, clone: Path) -> bool:
    """Put *state* into *config_dir* for an agent in *clone*; False when it cannot be resumed.

    The old clone's path becomes the new one, in file names (Claude's project directory)
    and in the files' text.
    """
    old, new = state.clone, str(clone.resolve())
    old_name, new_name = project_name(old), project_name(new)
    if old != new and (old_name is None or new_name is None):
        return False
    config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tarfile.open(fileobj=io.BytesIO(state.archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or member.name.startswith("/") or ".." in parts:
                continue  # only plain files, inside the config dir
            names = [new_name if part == old_name and new_name else part for part in parts]
            target = config_dir.joinpath(*names)
            source = tar.extractfile(member)
            if source is None:
                continue
            data = source.read()
            if old != new:
                text = data.decode("utf-8", errors="surrogateescape")
                data = text.replace(old, new).encode("utf-8", errors="surrogateescape")
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            target.write_bytes(data)
            target.chmod(0o600)
    return True


def save(directory: Path, state: SessionState, *, session_id: str | None) -> None:
    """Keep *state* (the newest of its task) in *directory*, under the run's directory."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = directory / f"{ARCHIVE}.partial"
    partial.write_bytes(state.archive)
    partial.chmod(0o600)
    partial.replace(directory / ARCHIVE)
    meta = {"clone": state.clone, "fingerprint": state.fingerprint, "session_id": session_id}
    (directory / META).write_text(json.dumps(meta), encoding="utf-8")


def load(directory: Path) -> tuple[SessionState, str | None] | None:
    """The state :func:`save` kept in *directory* and its session id, if any."""
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        archive = (directory / ARCHIVE).read_bytes()
    except (OSError, ValueError):
        return None
    state = SessionState(clone=meta["clone"], fingerprint=meta["fingerprint"], archive=archive)
    return state, meta.get("session_id")


def forget(directory: Path) -> None:
    """Drop what :func:`save` kept (a session that cannot be resumed)."""
    shutil.rmtree(directory, ignore_errors=True)
