"""A real multi-node Ray cluster on 127.0.0.1, made of processes this test run owns.

Never `ray stop`: it kills every Ray process on the machine. Each node is a `ray start
--block` in a session of its own, stopped by killing that process group and its tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
NODE_MEMORY = GiB  # what each test node offers to tasks' `ray_memory` requests
# The test clusters run without authentication, said outright: with the mode unset, a token
# file in the home directory (~/.ray/auth_token, which a local `ray.init()` of Ray 2.60
# writes) turns it on for some processes and not others, and no cluster forms. Set for this
# process and every process it starts: the nodes, the probe below, swarm's commands.
os.environ["RAY_AUTH_MODE"] = "disabled"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, *, avoid: frozenset[int] = frozenset()) -> list[int]:
    """*count* distinct free ports on 127.0.0.1, none of *avoid*.

    Each is held until all are picked: a port closed and asked for again can come back (two
    of a node's components were once given the same one, and the node did not start).
    """
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        while len(ports) < count:
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in avoid:
                ports.append(port)
    return ports


def ray_bin() -> str:
    return shutil.which("ray") or str(Path(sys.executable).parent / "ray")


@dataclass
class Node:
    name: str
    popen: subprocess.Popen[bytes]
    work_dir: Path
    log: Path

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.popen.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def raylet(self) -> psutil.Process | None:
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                if "raylet" in proc.name():
                    return proc
        return None


@dataclass
class Cluster:
    base: Path
    temp_dir: Path
    port: int
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        base: Path,
        *,
        workers: int = 1,
        slots: int = 2,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Cluster:
        """A head and *workers* nodes (*env* added to each one's environment), at *port*."""
        # Unix socket paths are capped near 107 bytes: a short temp dir of our own.
        temp_dir = Path(f"/tmp/swr-{secrets.token_hex(3)}")
        temp_dir.mkdir()
        cluster = cls(base=base, temp_dir=temp_dir, port=port or free_port())
        try:
            cluster._add("head", head=True, slots=slots, env=env)
            for i in range(workers):
                cluster._add(f"w{i}", head=False, slots=slots, env=env)
            cluster.wait_nodes(1 + workers)
        except BaseException:
            cluster.shutdown()
            raise
        return cluster

    def _add(self, name: str, *, head: bool, slots: int, env: dict[str, str] | None = None) -> None:
        work = self.base / f"node-{name}"
        work.mkdir(parents=True, exist_ok=True)
        agent, metrics, runtime_env, client = free_ports(4, avoid=frozenset({self.port}))
        argv = [
            ray_bin(), "start", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1",
            "--num-cpus", "2",
            "--object-store-memory", str(80 * 2**20),
            # Pinned: nodes on one box would each claim all of its memory.
            "--memory", str(NODE_MEMORY),
            "--resources", json.dumps({"agent_slot": slots, f"swarm_node_{name}": 1}),
            "--dashboard-agent-listen-port", str(agent),
            "--metrics-export-port", str(metrics),
            "--runtime-env-agent-port", str(runtime_env),
        ]  # fmt: skip
        if head:
            argv += [
                "--head", "--port", str(self.port), "--include-dashboard=false",
                "--ray-client-server-port", str(client), "--temp-dir", str(self.temp_dir),
            ]  # fmt: skip
        else:
            argv += ["--address", self.address]
        env = dict(os.environ) | (env or {})
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["SWARM_NODE_DIR"] = str(work)
        env["SWARM_NODE_NAME"] = name
        env["RAY_memory_monitor_refresh_ms"] = "0"  # nodes share one box: no OOM killer
        log = self.base / f"node-{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.nodes.append(Node(name=name, popen=popen, work_dir=work, log=log))

    def wait_nodes(self, count: int, *, timeout: float = 120.0) -> None:
        """Poll the cluster until *count* nodes are alive."""
        code = (
            "import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False, "
            "logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        )
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.popen.poll() is not None:
                    raise RuntimeError(
                        f"ray node {node.name} exited: {node.log.read_text()[-2000:]}"
                    )
            out = subprocess.run(
                [sys.executable, "-c", code, self.address],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            last = out.stdout.strip() + out.stderr[-500:]
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise RuntimeError(f"cluster did not reach {count} nodes: {last}")

    def kill_node(self, node: Node, procs: list[psutil.Process] | None = None) -> None:
        """Kill *node*'s whole process tree (or *procs*), as a machine loss would."""
        procs = node.tree() if procs is None else procs
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.popen.pid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)
        node.popen.wait(timeout=10)

    def add(self, name: str, *, slots: int = 2, env: dict[str, str] | None = None) -> Node:
        """Start one more worker node (*env* added to its environment) and wait for it."""
        self._add(name, head=False, slots=slots, env=env)
        self.wait_nodes(len(self.nodes))
        return self.nodes[-1]

    def remove(self, node: Node) -> None:
        """Stop *node* (added by :meth:`add`) and forget it."""
        self.kill_node(node)
        self.nodes.remove(node)

    def restart(self, node: Node, *, slots: int = 2) -> None:
        """Start a fresh node in place of *node* (killed): same name, same node dir."""
        if node.popen.poll() is None:
            self.kill_node(node)
        self.nodes.remove(node)
        self._add(node.name, head=False, slots=slots)
        self.wait_nodes(len(self.nodes))

    def diagnosis(self, proc: psutil.Process) -> str:
        """What a test that waited in vain for *proc* to end should print: where it hangs.

        *proc*'s ancestry, whether each node's raylet is alive, the tail of every raylet's log
        (a raylet that lost its head waits ``gcs_rpc_server_reconnect_timeout_s``, then ends
        with its workers) and how each Ray worker shut down.
        """
        lines: list[str] = []
        with contextlib.suppress(psutil.Error):
            for each in [proc, *proc.parents()]:
                with contextlib.suppress(psutil.Error):
                    cmd = " ".join(each.cmdline())[:160]
                    lines.append(f"  {each.pid} {each.status()} {cmd}")
        for node in self.nodes:
            raylet = node.raylet()
            lines.append(f"node {node.name}: raylet {raylet.pid if raylet else 'gone'}")
        for log in sorted(self.temp_dir.glob("session_*/logs/raylet*")):
            tail = log.read_text(errors="replace").splitlines()[-12:]
            lines += [f"--- {log.name}", *tail]
        # How each worker ended (Ray's "killing all child processes" names what it killed).
        for log in sorted(self.temp_dir.glob("session_*/logs/python-core-worker-*.log")):
            text = log.read_text(errors="replace").splitlines()
            ends = [line for line in text if "hutting down" in line or "child process" in line]
            if ends:
                lines += [f"--- {log.name}", *ends[-4:]]
        return "\n".join(lines)

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            procs = node.tree()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.popen.pid, signal.SIGTERM)
            _gone, alive = psutil.wait_procs(procs, timeout=10)
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.popen.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
