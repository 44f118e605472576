"""The node side of the Ray executor: one attempt of one task, on whichever node Ray placed it.

A :class:`NodeAgent` lives in a named, detached Ray actor (``run/ray_attempt.py`` creates it) but
knows nothing of Ray: it is plain Python, so it is tested and typed like the rest. Its clone
(made from the node's mirror, checkpointed and pushed to the remote) is
:class:`worktree_swarm.run.ray_node_clone.NodeClone`'s; this runs the agent in it under the same
shim and adapter as the local executor, the task's setup steps and checks, and hands the
coordinator the attempt's progress, log, findings and session, redacted. The remote's branch is
the only state that outlives a node; the node itself is :mod:`worktree_swarm.run.ray_node_host`'s.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass

from worktree_swarm.agents import adapter_for, claude_auth
from worktree_swarm.agents.base import prompt_argument
from worktree_swarm.git import committed_secrets
from worktree_swarm.git import repo as git
from worktree_swarm.guard import sandbox, surface
from worktree_swarm.infra import fs, redact, scrub, supervisor
from worktree_swarm.infra.logtail import read_log_end
from worktree_swarm.infra.proc import task_env
from worktree_swarm.report import notes
from worktree_swarm.run import ray_session
from worktree_swarm.run.checks import CheckFailure, run_checks, run_steps
from worktree_swarm.run.ray_node_clone import NodeClone

TAIL_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """What :meth:`NodeAgent.poll` reports."""

    ended: bool
    exit_code: int | None
    idle_seconds: float  # since its log last grew, on the node's wall clock
    log_size: int  # the log's size now: the coordinator times its growth on its own clock
    # Streaks of failed running checkpoints so far, and why the current one fails ("" if not).
    push_failures: int = 0
    push_failure: str = ""
    stopped: bool = False  # a stop was asked: an agent that ended did not end by itself
    ended_at: float | None = None  # when its shim saw it end, on the node's clock (None: unknown)
    started_at: float | None = None  # when its agent was started, on the node's clock


class NodeAgent(NodeClone):
    """One attempt of one task on this node: prepare, start, poll, tail, stop, finish."""

    def start(self, *, prompt: str, session: str | None, resume_prompt: str | None) -> int:
        """Start the agent under the shim; the shim's pid on this node."""
        task = self.a.task
        # git's own files of the clone (config, hooks, info) as setup left them: the baseline.
        self._surface = surface.read(self.work / ".git", ())
        adapter = adapter_for(task.agent)
        self.logs.mkdir(parents=True, exist_ok=True)
        # $SWARM_CONTEXT: the run's findings so far; what the agent adds goes back to the run.
        findings = self.logs / notes.FILE_NAME
        self._notes_from = notes.start_copy(findings, self.a.findings, run_id=self.a.run_id)
        if session is None:  # a resumed session was told already
            prompt += notes.findings_instructions(str(findings))
        prompt_file = self.logs / f"prompt-{self.a.attempt}.md"
        prompt_file.write_text(prompt, encoding="utf-8")
        values = {
            "prompt": prompt_argument(prompt, prompt_file),  # long: a pointer to the file
            "prompt_file": str(prompt_file),
            "task_id": task.id,
            "worktree": str(self.work),
            "branch": task.branch,
        }
        # What to do now goes in as the prompt does (a resumed session's prompt is just that).
        resume = None if resume_prompt is None else prompt_argument(prompt, prompt_file)
        argv = adapter.argv(
            task.agent_argv, values=values, session_id=session, resume_prompt=resume
        )
        env = adapter.env(
            base=self._base_env(), task_id=task.id, config_dir=self.logs / "agent-config"
        )
        if self.a.sandbox:  # bubblewrap around the agent only, writable in its clone
            claude_auth.confine(self.logs / "agent-config")
            argv, env = sandbox.confine(argv, env, self._confinement())
        # Stopped by its shim if this actor dies (its node's raylet gone, with the whole
        # cluster or alone): no agent works on where nothing will push or stop it.
        self._agent = supervisor.spawn(
            argv,
            cwd=self.work,
            env=env,
            log_path=self.log_path,
            grace=self.a.kill_grace,
            parent=os.getpid(),
        )
        if self.a.checkpoint_interval > 0:
            self._pusher = threading.Thread(target=self._push_periodically, daemon=True)
            self._pusher.start()
        return self._agent.identity.pid

    def setup(self) -> tuple[CheckFailure | None, str]:
        """Run the task's `setup` steps in the clone (every attempt: a clone is new)."""
        log = self.logs / "setup.log"
        with self._step:
            failure = run_steps(
                self.a.task.setup,
                cwd=self.work,
                env=self._base_env(),
                log=log,
                what="setup",
                timeout=self.a.task.setup_timeout,
                stop=self._stopping,
                grace=self.a.kill_grace,
                max_log=self.a.max_log,
            )
        return _redacted(failure), redact.redact(read_log_end(log, 8 * 2**20))

    def _base_env(self) -> dict[str, str]:
        """The environment of the agent, setup and checks (the agent's adapter adds to it)."""
        task = self.a.task
        return task_env(
            {
                # Nor from the task's directory (git never looks up into a ceiling directory):
                # not a repository the node's directory lies in.
                "GIT_CEILING_DIRECTORIES": str(self.work.parent.parent),
                "GIT_CONFIG_GLOBAL": str(self.logs / "gitconfig"),
                "SWARM_RUN_ID": self.a.run_id,
                "SWARM_TASK_ID": task.id,
                "SWARM_WORKTREE": str(self.work),
                "SWARM_BRANCH": task.branch,
                "SWARM_CONTEXT": str(self.logs / notes.FILE_NAME),
                **dict(task.env),
            }
        )

    def poll(self) -> Progress:
        """Whether the agent has ended, with its exit code."""
        agent = self._require()
        code = agent.poll()
        ended = code is not None or not agent.alive()
        if ended and code is None:
            code = agent.wait(timeout=0)
        failures, failing = self._push_failure  # read once: a pair of the same time
        return Progress(
            ended=ended,
            exit_code=code,
            idle_seconds=agent.idle_seconds(),
            log_size=fs.size_of(agent.log_path),
            push_failures=failures,
            push_failure=failing,
            stopped=self._stopping.is_set(),
            ended_at=agent.ended_at() if ended else None,
            started_at=agent.started_at,
        )

    def tail(self, offset: int) -> tuple[int, bytes]:
        """The log from *offset* on, redacted: where the next read starts, and the bytes.

        Whole lines only while the agent may still write or more follows (a secret written in
        pieces is redacted whole), at most 1 MiB per call: a longer line goes in pieces, cut
        at a blank before their last 4 KiB (no token cut in two). Multi-line secrets (a PEM
        key) are redacted in the whole log once the attempt ends (:meth:`scrub_log`).
        """
        agent = self._agent
        # Looked at before the read: an agent that had ended then has written all it will.
        writing = agent is not None and agent.poll() is None and agent.alive()
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read(TAIL_LIMIT)
        except FileNotFoundError:
            return offset, b""
        full = len(chunk) == TAIL_LIMIT
        if writing or full:
            chunk = _whole_lines(chunk, full=full)
        return offset + len(chunk), redact.redact_bytes(chunk)

    def scrub_log(self) -> None:
        """Redact the whole log in place (the agent has ended): a secret over lines too."""
        scrub.scrub_file(self.log_path)

    def notes_added(self) -> str:
        """What the agent added to its findings file since last asked (for the run's file)."""
        text, self._notes_from = notes.added_since(self.logs / notes.FILE_NAME, self._notes_from)
        return redact.redact(text)

    def log_text(self) -> str:
        """The end of the log, for the adapter's reading (redacted)."""
        return redact.redact(read_log_end(self.log_path, 8 * 2**20))

    def stop(self) -> int | None:
        """Kill the agent's whole tree on this node (the shim's stop) and reap it; end checks."""
        self._stopping.set()
        if self._agent is None:  # in setup: the step sees the stop and ends
            return None
        return self._agent.stop(grace=self.a.kill_grace)

    def check(self, *, base: str) -> tuple[CheckFailure | None, str]:
        """Run the task's checks in the clone: the failure and the log.

        After :meth:`finish`, or after :meth:`prepare` alone to check a pushed branch again.
        """
        log = self.logs / "checks.log"
        with self._step:
            failure = run_checks(
                self.a.task,
                worktree=self.work,
                base=base,
                env=self._base_env(),
                log=log,
                stop=self._stopping,
                grace=self.a.kill_grace,
                max_log=self.a.max_log,
            )
        return _redacted(failure), redact.redact(read_log_end(log, 8 * 2**20))

    def own_commits(self, *, since: str, base: str) -> list[dict[str, str]]:
        """The commits its agent made itself on the task's branch holding a node's secret.

        Of ``since..`` the branch's tip in the clone (as pushed), looked through with this
        node's environment and the task's ``env`` (:meth:`_base_env`): a secret only the node
        holds, which its coordinator never knows. Each as ``commit``, ``path`` (redacted here:
        a file's name can be the value) and ``why`` (the variable's name, never the value).
        """
        if self._agent is None:  # no agent ran: nothing is its own
            return []
        with self._git_lock:
            self._settle_git_files()  # nothing its agent planted runs with swarm's git
            tip = git.rev_parse_in(self.work, f"refs/heads/{self.a.task.branch}")
            if tip is None or tip == since:
                return []
            clone = git.Repo(root=self.work, common_dir=self.work / ".git")
            found = committed_secrets.own_leaks_since(
                clone, since=since, base=base, tip=tip, env=self._base_env()
            )
        return [
            {"commit": leak.commit, "path": redact.redact(leak.path), "why": leak.why}
            for leak in found
        ]

    def session_state(self, since: str | None) -> ray_session.SessionState | None:
        """The agent's config dir packed (its session files), unless unchanged since *since*."""
        return ray_session.pack(self.logs / "agent-config", self.work, since=since)

    def restore_session(self, state: ray_session.SessionState) -> bool:
        """Put an earlier attempt's session files in place (after :meth:`prepare`)."""
        return ray_session.unpack(state, self.logs / "agent-config", self.work)

    # -- helpers ------------------------------------------------------------------------------

    def _confinement(self) -> sandbox.Confinement:
        return sandbox.Confinement(
            worktree=self.work,
            common_dir=self.work / ".git",
            state_dir=self.logs,
            task_dir=self.logs,
            config_dir=self.logs / "agent-config",  # as passed to adapter.env
            temp_dir=self.logs / "tmp",
            findings=self.logs / notes.FILE_NAME,  # $SWARM_CONTEXT
            extra=self.a.sandbox_writable,
        )

    def _require(self) -> supervisor.AgentProcess:
        if self._agent is None:
            raise RuntimeError("the agent was not started")
        return self._agent


def _redacted(failure: CheckFailure | None) -> CheckFailure | None:
    """*failure* with its summary and output redacted, for the head."""
    if failure is None:
        return None
    return dataclasses.replace(
        failure, summary=redact.redact(failure.summary), detail=redact.redact(failure.detail)
    )


def _whole_lines(chunk: bytes, *, full: bool) -> bytes:
    """*chunk* up to its last line end; a *full* one without any, up to a blank before its end."""
    end = chunk.rfind(b"\n") + 1
    if end or not full:
        return chunk[:end]
    blank = scrub.token_safe_end(chunk)
    return chunk[:blank] if blank > 0 else chunk
