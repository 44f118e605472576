"""The ``-c`` overrides that keep a repository's own files from making git run a program.

Always the same list (:data:`ALWAYS`: hooks, fsmonitor, signing, editors, submodules ...),
plus, per checkout, ``hook.<x>.enabled=false`` for each hook its config defines (git 2.54 runs
those whatever ``core.hooksPath`` says), and a neutral value for each program-running setting
its repository-level config defines (filter, diff and merge drivers, credential helpers, ssh
and gpg programs, what git-lfs runs), or its user-level config since the run began
(:mod:`worktree_swarm.git.user_config`), read with ``git config --list`` and cached while the
config files (and the trusted snapshot) stay as they are.
docs/guard.md lists them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path

from worktree_swarm.core.paths import STATE_DIR_NAME
from worktree_swarm.git import sparse, user_config
from worktree_swarm.git.config_files import bounded_put, cache_lock, config_files
from worktree_swarm.git.process import execute
from worktree_swarm.infra import fs

# Overrides on every command. Each names a setting that makes plain git commands execute a
# program (with the git version that introduced it), or that does work swarm never wants.
ALWAYS: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", os.devnull),  # hooks, incl. reference-transaction (2.28) and post-checkout
    ("core.fsmonitor", "false"),  # a command or hook path (2.16; builtin daemon 2.36)
    ("core.editor", "true"),
    ("sequence.editor", "true"),
    ("core.pager", "cat"),
    ("commit.gpgSign", "false"),
    ("push.gpgSign", "false"),  # a push certificate: the signing program (or ssh key command)
    # A signature check runs gpg, and swarm's own checkpoints are never signed: every merge of
    # a task's branch would fail on them.
    ("merge.verifySignatures", "false"),
    ("tag.gpgSign", "false"),
    ("protocol.ext.allow", "never"),
    ("core.commitGraph", "false"),  # commits as they are, not as a graph file anyone can write
    ("gc.auto", "0"),  # no automatic gc after swarm's own commits
    ("maintenance.auto", "false"),  # 2.29: `git maintenance run --auto` after commits
    # Never git in a submodule, under its own config: not by recursion, nor for a summary.
    ("submodule.recurse", "false"),
    ("diff.submodule", "short"),
    ("status.submoduleSummary", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("push.recurseSubmodules", "no"),
    # Your settings that make swarm's own work fail or its patches unusable: with
    # core.autocrlf, safecrlf refused every checkpoint of a file that would not round-trip;
    # without prefixes (or with i/ and w/) a patch swarm keeps is one `git apply` refuses.
    ("core.safecrlf", "false"),
    ("diff.noprefix", "false"),
    ("diff.mnemonicPrefix", "false"),
    ("diff.relative", "false"),
)

# Per-driver keys that run a program; neutralised when repository-level config defines them.
_DRIVER_KEYS = {
    "filter": {"clean": "", "smudge": "", "process": "", "required": "false"},
    "diff": {"textconv": "cat", "command": "false"},  # and --no-ext-diff/--no-textconv
    "merge": {"driver": "false"},  # `false` fails the merge driver: a conflict, never code
    "credential": {"helper": ""},  # credential.<url>.helper: an empty value clears the list
}
# What a fetch or push to a local or ssh remote starts on the other side. git takes the first
# value it reads, so no `-c` overrides a planted one: the command's own option does.
PACK_KEYS = {"uploadpack": "git-upload-pack", "receivepack": "git-receive-pack"}
PACK_OPTIONS = {
    "fetch": ("uploadpack", "--upload-pack"),
    "pull": ("uploadpack", "--upload-pack"),
    "ls-remote": ("uploadpack", "--upload-pack"),
    "push": ("receivepack", "--receive-pack"),
}
# A planted uploadpack turns lazy fetching off (GIT_NO_LAZY_FETCH), which git ignores before
# 2.39.4 (2.40.2, 2.41.1, 2.42.2, 2.43.4, 2.44.1 in their series): the transports that start it,
# a path (or file://) and ssh, are then refused to every command but a fetch or push of swarm's
# own (:data:`PACK_OPTIONS`), which names git's; in a partial clone (:func:`lazy_fetches`) to
# those too, since one may start a lazy fetch (a push packing a blob the clone lacks) that
# names no upload-pack: a fetch or push of swarm's over a path or ssh then fails while the
# plant lasts. No other command of swarm's uses a remote.
NO_LAZY_FETCH = "GIT_NO_LAZY_FETCH"
PACK_TRANSPORTS_OFF = ("-c", "protocol.file.allow=never", "-c", "protocol.ssh.allow=never")
# Plain keys that run a program when set in repository-level config.
_EXEC_KEYS = {
    "core.sshcommand": "ssh",
    "core.gitproxy": "",
    "core.askpass": "",
    "credential.helper": "",
    "core.alternaterefscommand": "",
    "gpg.program": "gpg",
    "gpg.ssh.program": "ssh-keygen",
    "gpg.ssh.defaultkeycommand": "false",  # asked for the key to sign with
    "gpg.x509.program": "gpgsm",
    "gpg.openpgp.program": "gpg",
    "uploadpack.packobjectshook": "",
}
# What git-lfs (the filter of your global config, run by swarm's git too) runs from any config
# it reads, the repository's included. It reads `git config -l` line by line, each split at its
# first `=`: a value holding a newline, or a subsection holding `=`, is read as other keys
# (:func:`lfs_keys`). `lfs.extension.<x>.<anything>` makes an extension, whose `clean` (split
# at spaces, no shell) git-lfs runs on every file it cleans, refusing to clean at all when two
# share a priority (0 unless set): each planted one gets `cat` (the file passes unchanged, and
# an extension that changed nothing is left out of the pointer), `smudge` `false` and a
# priority of its own from :data:`LFS_PRIORITY` on. `lfs.customtransfer.<x>.path` (its pattern
# is not anchored) and `.args` run through a shell at a transfer: `false` and empty. git-lfs
# takes the last value of a key, which is a `-c` one.
_LFS_TRANSFER = re.compile(r"lfs.customtransfer.[^.]+.path")
_LFS_EXTENSION = {"clean": "cat", "smudge": "false"}
LFS_PRIORITY = 1 << 30  # past any of yours: an int of 32 bits, as git-lfs may read it


def _lfs_neutral(name: str) -> str | None:
    """The value that keeps git-lfs from running what the config key *name* names, or None."""
    match name.lower().split("."):
        case ["lfs", "extension", _, leaf] if leaf in _LFS_EXTENSION:
            return _LFS_EXTENSION[leaf]
        case ["lfs", "customtransfer", _, "args"]:
            return ""
    return "false" if _LFS_TRANSFER.search(name.lower()) else None


def lfs_keys(name: str, value: str | None) -> list[str]:
    """The keys git-lfs reads from the setting *name* = *value* (None: a key with no value).

    ``git config -l`` prints it as ``name=value``, and git-lfs splits that into lines, and
    each at its first ``=``: ``[lfs "extension.x.clean=/bin/p"] y = z`` is its
    ``lfs.extension.x.clean`` set to ``/bin/p.y=z``.
    """
    text = name if value is None else f"{name}={value}"
    return [key for key, eq, _ in (line.partition("=") for line in text.split("\n")) if eq]


def lfs_runs(name: str, value: str | None) -> bool:
    """Whether git-lfs, reading the setting *name* = *value* as it does, finds what it runs.

    Its keys are :func:`lfs_keys`'s: an extension's ``clean``/``smudge`` or a custom
    transfer's ``path``/``args`` hidden in a value's second line or in a subsection's ``=``.
    """
    return any(_lfs_neutral(key) is not None for key in lfs_keys(name, value))


def _lfs_extension(key: str) -> str | None:
    """The ``lfs.extension.<x>`` that git-lfs makes of *key*, as it reads it, or None."""
    match key.split("."):
        case [lfs, extension, name, _] if (lfs + "." + extension).lower() == "lfs.extension":
            return f"{lfs}.{extension}.{name}"
    return None


def _lfs_settings(keys: set[str]) -> dict[str, str]:
    """Overrides for what git-lfs runs from *keys* (:func:`lfs_keys` of untrusted settings)."""
    found: dict[str, str] = {}
    extensions = sorted({ext for key in keys if (ext := _lfs_extension(key)) is not None})
    for i, ext in enumerate(extensions):
        found |= {f"{ext}.{leaf}": value for leaf, value in _LFS_EXTENSION.items()}
        found[f"{ext}.priority"] = str(LFS_PRIORITY + i)
    for key in keys:
        value = _lfs_neutral(key)
        # One git cannot take (`-c` refuses its name) only runs at an LFS transfer.
        if value is not None and _lfs_extension(key) is None and _is_config_name(key):
            found[key] = value
    return found


_CONFIG_NAME = re.compile(r"[A-Za-z0-9-]+(\..*)?\.[A-Za-z][A-Za-z0-9-]*")


def _is_config_name(key: str) -> bool:
    """Whether git takes *key* as a setting's name (a section, a subsection, a variable)."""
    return _CONFIG_NAME.fullmatch(key) is not None


# Plain keys git takes the first value of (``core.gitProxy``: the first that matches the host),
# so a `-c` read after the repository's config is ignored: the variable that git reads before
# any config is set instead (empty: no proxy, unless your environment names one).
_ENV_KEYS = {"core.gitproxy": "GIT_PROXY_COMMAND"}
_UNTRUSTED_SCOPES = ("local", "worktree")
_ALWAYS_KEYS = frozenset(key.lower() for key, _ in ALWAYS)
# Settings git runs a program for only when you ask (`git difftool`, `git help`, an alias).
# `<tool>.path` is the program git runs for a tool it knows (`diff.tool = vimdiff`).
_ASKED_SECTIONS = {
    "difftool": {"cmd", "path"},
    "mergetool": {"cmd", "path"},
    "browser": {"cmd", "path"},
    "man": {"cmd", "path"},
    "guitool": {"cmd"},  # `git gui`'s Tools menu
}


# Settings that make a later git of yours run a program, or fetch through one, which swarm's
# own commands never meet (no `-c` needed): judged where an agent may write config.
_JUDGED_KEYS = frozenset({"core.attributesfile", "interactive.difffilter", "web.browser"})
_JUDGED_LEAVES = {  # <section>.<name>.<leaf>
    "submodule": {"update"},  # `!command`: run by your `git submodule update`
    "protocol": {"allow"},  # `ext::` remotes run a command
    "url": {"insteadof", "pushinsteadof"},  # a remote turned into an `ext::` one
    "remote": {"vcs"},  # a remote helper program
    "trailer": {"command", "cmd"},
    "tar": {"command"},
    "sendemail": {"tocmd", "cccmd", "sendmailcmd", "smtpserver"},
    # git-lfs (its filter is in your global config) runs what the repository's config names:
    # lfs.extension.<x>.clean/smudge on each file it filters, lfs.customtransfer.<x>.path.
    "lfs": {"clean", "smudge", "path"},
}


def _configured_hook(name: str) -> str | None:
    """The hook *name* configures (``hook.<hook>.command`` or ``.event``), or None.

    git 2.54 on runs such a hook at its event whatever ``core.hooksPath`` says; only
    ``hook.<hook>.enabled=false`` turns it off.
    """
    section, _, rest = name.partition(".")
    hook, _, leaf = rest.rpartition(".")
    if section.lower() == "hook" and hook and leaf.lower() in _HOOK_LEAVES:
        return hook
    return None


_HOOK_LEAVES = frozenset({"command", "event"})


def runs_program(name: str) -> bool:
    """Whether the config key *name* can make git run a program (or read a file that may).

    :data:`ALWAYS`'s keys, the program-running ones of repository-level config (drivers,
    helpers, ssh and gpg programs, ``remote.<x>.uploadpack``), ``include.path`` and
    ``includeIf.<cond>.path``, configured hooks (``hook.<x>.command``/``event``), pagers,
    aliases and the tools' commands, and what only a later git of yours runs
    (:data:`_JUDGED_KEYS`, :data:`_JUDGED_LEAVES`).
    """
    lowered = name.lower()
    section, _, rest = lowered.partition(".")
    middle, _, leaf = rest.rpartition(".")
    if lowered in _ALWAYS_KEYS or lowered in _EXEC_KEYS or lowered == "diff.external":
        return True
    if lowered in _JUDGED_KEYS or lowered == "protocol.allow" or _lfs_neutral(lowered) is not None:
        return True
    if leaf in _JUDGED_LEAVES.get(section, ()) and (middle or section == "sendemail"):
        return True
    if section in {"include", "includeif"} and leaf == "path":
        return True
    if _configured_hook(name) is not None:
        return True
    if section in {"pager", "alias"} or (section == "remote" and leaf in PACK_KEYS):
        return True
    if leaf in _ASKED_SECTIONS.get(section, ()) and middle:
        return True
    return bool(middle) and leaf in _DRIVER_KEYS.get(section, {})


def judged(name: str, value: str | None) -> bool:
    """Whether the setting *name* = *value* runs a program (:func:`runs_program`, `lfs_runs`).

    The only settings of your user-level config whose trust matters: no others are recorded.
    """
    return runs_program(name) or lfs_runs(name, value)


def overrides(cwd: Path) -> tuple[list[str], dict[str, str]]:
    """The arguments that make a git command in *cwd* immune to planted config, and their env.

    Each is ``-c KEY=VALUE``, but for a key whose name holds ``=`` (a driver named ``a=b``,
    which an attribute ``filter=a=b`` selects): git splits ``-c`` at the first ``=``, so that
    one is ``--config-env=KEY=VAR`` (split at the last), its value in the returned variable;
    a key git keeps the first value of is neutralised by its variable (:data:`_ENV_KEYS`).
    A planted ``remote.<x>.uploadpack`` turns lazy fetching off (:data:`NO_LAZY_FETCH`): the
    fetch git starts itself for an object a partial clone lacks gets no ``--upload-pack``
    (the caller adds :data:`PACK_TRANSPORTS_OFF` for a git that ignores it).
    In a sparse task worktree (one with its own ``info/sparse-checkout``) they also switch
    sparse checkout on, so that git applies the patterns and, reading the index, takes back
    into view any skipped file an agent wrote (otherwise its work there would go unseen).
    """
    files = config_files(cwd)
    args: list[str] = []
    values: dict[str, str] = {}
    for key, value in (*ALWAYS, *_repository_exec_settings(cwd, files), *_sparse_settings(files)):
        if _is_pack_key(key):
            if key.endswith(".uploadpack"):  # what a lazy fetch of a partial clone starts
                values[NO_LAZY_FETCH] = "1"
            continue
        if key.lower() in _ENV_KEYS:  # git keeps the first value it reads: no `-c` wins
            variable = _ENV_KEYS[key.lower()]
            values[variable] = os.environ.get(variable, "")  # yours, else none
            continue
        if "=" in key:
            var = f"SWARM_GIT_CONFIG_{len(values)}"
            values[var] = value
            args.append(f"--config-env={key}={var}")
        else:
            args += ["-c", f"{key}={value}"]
    return args, values


def neutral_filters(cwd: Path) -> frozenset[str]:
    """The filter drivers the repository's own config defines in *cwd*: git never runs them.

    A file whose attributes select one is hashed by swarm's `git add` as it is on disk (no
    clean filter: a git-crypt file would be committed in the clear).
    """
    settings = _repository_exec_settings(cwd, config_files(cwd))
    return frozenset(
        key.partition(".")[2].rpartition(".")[0]
        for key, _ in settings
        if key.partition(".")[0].lower() == "filter"
    )


def filter_origins(cwd: Path, drivers: Collection[str]) -> set[str]:
    """Where the filters *drivers* of *cwd* that git never runs come from (one `git config`).

    ``repository`` (its own config) and ``user`` (your global or system config, new there
    since the run began): for a message, read only when a file was left out for one.
    """
    files = config_files(cwd)
    state_dir = files[1].parent / STATE_DIR_NAME if files else None
    args = ["config", "--list", "--show-scope", "--show-origin", "-z"]
    found: set[str] = set()
    for scope, _, name, value in user_config.parse(execute(cwd, args, check=False).stdout):
        section, _, rest = name.partition(".")
        driver, _, leaf = rest.rpartition(".")
        if section.lower() != "filter" or driver not in drivers:
            continue
        if leaf.lower() not in _DRIVER_KEYS["filter"]:
            continue
        if scope in _UNTRUSTED_SCOPES:
            found.add("repository")
        elif _planted(state_dir, scope, name, value):
            found.add("user")
    return found


def planted_packs(cwd: Path) -> set[str]:
    """The ``remote.<name>.uploadpack``/``receivepack`` leaves the repository's config sets."""
    settings = _repository_exec_settings(cwd, config_files(cwd))
    return {key.rpartition(".")[2] for key, _ in settings if _is_pack_key(key)}


def lazy_fetches(cwd: Path) -> bool:
    """Whether the repository of *cwd* is a partial clone: git fetches what it lacks itself.

    Its promisor remotes are ``extensions.partialClone`` and any ``remote.<x>.promisor``.
    """
    # `git config` only reads files: it runs no hook, fsmonitor or driver.
    pattern = r"^(extensions\.partialclone|remote\..*\.promisor)$"
    out = execute(cwd, ["config", "--null", "--get-regexp", pattern], check=False)
    for entry in filter(None, out.stdout.split("\0")):
        name, _, value = entry.partition("\n")
        if name.lower() == "extensions.partialclone" or value.lower() in _TRUE:
            return True
    return False


_TRUE = frozenset({"true", "yes", "on", "1", ""})


def _is_pack_key(key: str) -> bool:
    """Whether *key* is a ``remote.<name>.uploadpack``/``receivepack`` as the scan names it."""
    return key.startswith("remote.") and key.rpartition(".")[2] in PACK_KEYS


def _sparse_settings(files: Sequence[Path]) -> tuple[tuple[str, str], ...]:
    if not files:
        return ()
    admin, common = files[0].parent, files[1].parent
    if admin != common and sparse.pattern_file(admin).is_file():
        return sparse.SETTINGS
    return ()


_cache: dict[tuple[object, ...], tuple[tuple[str, str], ...]] = {}


def _stat_key(paths: Sequence[Path]) -> tuple[object, ...]:
    key: list[object] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            key.append((str(path), None))
        else:
            key.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(key)


def _content_key(paths: Sequence[Path]) -> tuple[object, ...] | None:
    """The bytes of *paths* (by role, not by name); None when they include other files.

    Worktrees of one repository read the same files (the admin dir's ``config.worktree`` is
    usually absent), so one scan answers for all of them. Not with ``include``/``includeIf``:
    a condition (``onbranch:``) answers differently per worktree, and an included file can
    change without these changing.
    """
    contents: list[object] = []
    for path in paths:
        try:
            data = fs.read_file(path)
        except FileNotFoundError:
            data = None
        except OSError:
            return None
        if data is not None and b"include" in data.lower():
            return None
        contents.append(data)
    return ("content", *contents)


def _repository_exec_settings(cwd: Path, files: Sequence[Path]) -> tuple[tuple[str, str], ...]:
    """Overrides for program-running settings that the repository's own config defines.

    *files* are the repository-level config files of *cwd* (:func:`config_files`).
    """
    # Your global and system config count too: a setting new there since the run began is not
    # trusted (user_config), so their stats and the trusted snapshot are in both keys.
    if not files:
        return _scan_repository_config(cwd, None)
    state_dir = files[1].parent / STATE_DIR_NAME  # the common dir's: its runs' record
    users = user_config.state_key(state_dir)
    key = (str(cwd), _stat_key(files), users)
    with cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache[key] = _cache.pop(key)  # the newest again
    if cached is not None:
        return cached
    shared = _shared_key(files, users)
    if shared is None:
        # Config that includes other files is read for every command: an included file can
        # change (or a condition answer differently) while the including files stay as they are.
        return _scan_repository_config(cwd, state_dir)
    with cache_lock:
        result = _cache.get(shared)
        if result is not None:
            _cache[shared] = _cache.pop(shared)  # shared by every worktree: kept the newest
    if result is None:
        result = _scan_repository_config(cwd, state_dir)
        # Cached only when the files did not change while git read them.
        if (
            _stat_key(files) != key[1]
            or _shared_key(files, user_config.state_key(state_dir)) != shared
        ):
            return result
    with cache_lock:
        bounded_put(_cache, key, result)
        bounded_put(_cache, shared, result)
    return result


def _shared_key(files: Sequence[Path], users: tuple[object, ...]) -> tuple[object, ...] | None:
    """:func:`_content_key` of *files* with *users* (the user-level config's state key)."""
    content = _content_key(files)
    return None if content is None else (*content, users)


def _scan_repository_config(cwd: Path, state_dir: Path | None) -> tuple[tuple[str, str], ...]:
    """Overrides for what the config of *cwd* runs (one `git config`).

    The repository's own settings, and the user-level ones that *state_dir*'s runs do not
    trust (:mod:`user_config`; all trusted without a state dir).
    """
    # `git config` only reads files: it runs no hook, fsmonitor or driver.
    args = ["config", "--list", "--show-scope", "--show-origin", "-z"]
    entries = user_config.parse(execute(cwd, args, check=False).stdout)
    user_config.note_origins(entries)  # included files' stats join the cache key
    found: dict[str, str] = {}
    lfs: set[str] = set()
    for scope, _, name, value in entries:
        hook = _configured_hook(name)
        if hook is not None:  # of any scope: swarm's git runs no hook (core.hooksPath) at all
            found[f"hook.{hook}.enabled"] = "false"
        if scope not in _UNTRUSTED_SCOPES and not _planted(state_dir, scope, name, value):
            continue
        lfs.update(lfs_keys(name, value))
        lowered = name.lower()
        if lowered in _EXEC_KEYS:
            found[name] = _EXEC_KEYS[lowered]
            continue
        section, _, rest = name.partition(".")
        driver, _, leaf = rest.rpartition(".")
        if section.lower() == "remote" and leaf.lower() in PACK_KEYS:
            found[f"remote.{driver}.{leaf.lower()}"] = PACK_KEYS[leaf.lower()]
            continue
        keys = _DRIVER_KEYS.get(section.lower())
        if keys is not None and driver and leaf.lower() in keys:
            for neutral_leaf, neutral in keys.items():
                found[f"{section}.{driver}.{neutral_leaf}"] = neutral
    found |= _lfs_settings(lfs)
    return tuple(sorted(found.items()))


def _planted(state_dir: Path | None, scope: str, name: str, value: str | None) -> bool:
    """Whether a user-level setting that runs a program is new since the run began."""
    if state_dir is None or scope not in user_config.USER_SCOPES or not judged(name, value):
        return False
    return not user_config.trusted(state_dir, name, value)
