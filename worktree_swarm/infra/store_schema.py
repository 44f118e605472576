"""The state database's schema: its append-only migrations and the version they reach."""

from __future__ import annotations

# Migration N (1-based) takes the database from user_version N-1 to N. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            base_commit TEXT NOT NULL,
            repo_root TEXT NOT NULL,
            jobs INTEGER NOT NULL,
            created_at REAL NOT NULL,
            ended_at REAL,
            status TEXT NOT NULL,
            manager_pid INTEGER,
            manager_create_time REAL,
            spec_json TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE tasks (
            run_id TEXT NOT NULL REFERENCES runs(run_id),
            task_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            branch TEXT NOT NULL,
            worktree TEXT NOT NULL,
            base_commit TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            started_at REAL,
            ended_at REAL,
            stop_requested INTEGER NOT NULL DEFAULT 0,
            spec_json TEXT NOT NULL,
            diff_files INTEGER,
            diff_insertions INTEGER,
            diff_deletions INTEGER,
            cost_usd REAL,
            tokens_in INTEGER,
            tokens_out INTEGER,
            PRIMARY KEY (run_id, task_id)
        )
        """,
        """
        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            task_id TEXT NOT NULL,
            number INTEGER NOT NULL,
            pid INTEGER NOT NULL,
            create_time REAL NOT NULL,
            pgid INTEGER NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            exit_code INTEGER,
            outcome TEXT,
            log_path TEXT NOT NULL,
            FOREIGN KEY (run_id, task_id) REFERENCES tasks(run_id, task_id)
        )
        """,
        "CREATE INDEX attempts_by_task ON attempts(run_id, task_id, number)",
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(run_id),
            task_id TEXT,
            ts REAL NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL
        )
        """,
        "CREATE INDEX events_by_run ON events(run_id, id)",
    ),
    (
        # What an agent reported per attempt (resume needs the session id).
        "ALTER TABLE attempts ADD COLUMN reason TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE attempts ADD COLUMN session_id TEXT",
        "ALTER TABLE attempts ADD COLUMN cost_usd REAL",
        "ALTER TABLE attempts ADD COLUMN tokens_in INTEGER",
        "ALTER TABLE attempts ADD COLUMN tokens_out INTEGER",
        "ALTER TABLE attempts ADD COLUMN cache_read_tokens INTEGER",
        "ALTER TABLE tasks ADD COLUMN cache_read_tokens INTEGER",
    ),
    (
        # A task's disk use when it ended, and when max_disk removed its worktree.
        "ALTER TABLE tasks ADD COLUMN disk_apparent INTEGER",
        "ALTER TABLE tasks ADD COLUMN disk_actual INTEGER",
        "ALTER TABLE tasks ADD COLUMN worktree_removed_at REAL",
    ),
    (
        # What happened to a done task's branch afterwards: facts beside its state, never a
        # state. Older stores recorded merges as the states `merged`/`conflicted`.
        "ALTER TABLE tasks ADD COLUMN merge_result TEXT",
        "ALTER TABLE tasks ADD COLUMN merge_target TEXT",
        "ALTER TABLE tasks ADD COLUMN merge_commit TEXT",
        "ALTER TABLE tasks ADD COLUMN merge_detail TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE tasks ADD COLUMN pr_number INTEGER",
        "ALTER TABLE tasks ADD COLUMN pr_url TEXT",
        "ALTER TABLE tasks ADD COLUMN pr_state TEXT",
        """
        UPDATE tasks SET merge_result = state, merge_detail = reason, state = 'done', reason = ''
        WHERE state IN ('merged', 'conflicted')
        """,
    ),
    (
        # Which agent profile ran each attempt (fallback and budget agents), and until when a
        # rate-limited attempt's task waits (so `swarm resume` keeps the same reset).
        "ALTER TABLE attempts ADD COLUMN agent TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE attempts ADD COLUMN retry_at REAL",
    ),
    (
        # Crash-idempotent provisioning and `swarm retry`: the start commit is recorded before
        # git is touched; a retry ignores the attempts before it (and, fresh, their session).
        "ALTER TABLE tasks ADD COLUMN start_commit TEXT",
        "ALTER TABLE tasks ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN retry_fresh INTEGER NOT NULL DEFAULT 0",
        # The attempt number being launched, set before the agent starts and cleared once its
        # attempt is recorded: a manager killed in between leaves an agent no attempt names.
        "ALTER TABLE tasks ADD COLUMN launching INTEGER",
    ),
    (
        # The cluster node a task's newest attempt runs on (executor `ray`).
        "ALTER TABLE tasks ADD COLUMN node TEXT",
    ),
    (
        # What the agent was asked to do now (a repair, a hand-over), until an attempt of it
        # runs to its end: a resumed manager asks again after a rate limit.
        "ALTER TABLE tasks ADD COLUMN instruction TEXT",
    ),
    (
        # A rate-limited attempt's wait was a usage window's: it used none of the retries.
        "ALTER TABLE attempts ADD COLUMN usage_window INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # How many of its `repair` rounds a task has used: a resumed manager goes on counting.
        "ALTER TABLE tasks ADD COLUMN repairs INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # A rate-limited attempt got work done before its limit: it used none of the retries.
        "ALTER TABLE attempts ADD COLUMN progressed INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # The task branch's tip at its last checkpoint: what its dependents start from once
        # its branch is gone (landed and cleaned) or another run's (its id reused).
        "ALTER TABLE tasks ADD COLUMN tip_commit TEXT",
    ),
    (
        # The agent profile being launched with `launching` (a fallback's, maybe): the one
        # `swarm stop` records for an attempt its killed manager launched but did not record.
        "ALTER TABLE tasks ADD COLUMN launching_agent TEXT",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
