"""Reaching the Ray cluster of the Ray executor: Ray imported on demand, joining, its head probed.

A head that is not there, or a port where something else listens, is told in seconds (an
HTTP/2 greeting, then the GCS's own method) where ``ray.init`` would wait minutes;
:class:`HeadWatch` tells the coordinator once the head has been silent for ``lost_after``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import threading
import time
from typing import Any

from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.run_settings import RunSettings
from worktree_swarm.core.units import format_duration

PROBE_SECONDS = 5.0
# How often the coordinator asks whether the cluster's head still answers.
HEAD_CHECK_SECONDS = 2.0
# Ray ends a driver whose head is gone for 60 s by killing its process; the coordinator
# waits this long past `lost_after` (it decides, and winds the run down in the meantime).
_GCS_PATIENCE = "RAY_gcs_rpc_server_reconnect_timeout_s"
_PATIENCE_MARGIN = 600.0


class ClusterLostError(SwarmError):
    """The cluster's head has not answered for ``lost_after``: no attempt can go on."""


def ray_module() -> Any:  # noqa: ANN401 - Ray is optional and untyped here on purpose
    """The Ray module; a BadInputError when Ray is not installed."""
    try:
        import ray  # noqa: PLC0415 - only this executor needs it
    except ImportError:
        raise BadInputError(
            "executor `ray` needs Ray on this machine: pip install 'worktree-swarm[ray]'"
        ) from None
    return ray


_connect_lock = threading.Lock()


# HTTP/2's connection preface and an empty SETTINGS frame; a server's first frame is SETTINGS.
_HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes((0, 0, 0, 4, 0, 0, 0, 0, 0))
_FRAME_HEADER = 9
_SETTINGS_FRAME = 4


def connect(address: str, *, lost_after: float = 60.0) -> None:
    """Join the Ray cluster at *address* (empty: ``RAY_ADDRESS``, else this machine's).

    Ray is kept from ending this process while its head is gone for less than *lost_after*
    (and some time to wind down).
    """
    ray = ray_module()
    with _connect_lock:
        if ray.is_initialized():
            return
        _probe(address or os.environ.get("RAY_ADDRESS", ""))
        os.environ[_GCS_PATIENCE] = str(int(lost_after + _PATIENCE_MARGIN))
        # `ray.init` makes SIGTERM a SystemExit raised wherever the main thread is: swarm's
        # own handler (the run's stop, between steps) is put back.
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(
                address=address or "auto",
                log_to_driver=False,
                logging_level="ERROR",
                configure_logging=False,
            )
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = address or "RAY_ADDRESS or this machine"
            raise BadInputError(
                f"cannot reach a Ray cluster at {where}: {first}; start one with `ray start "
                "--head` or pass --ray-address"
            ) from None
        finally:
            if sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, sigterm)


def _probe(address: str) -> None:
    """Raise BadInputError unless a gRPC server (a Ray head) answers at ``HOST:PORT`` *address*.

    ``ray.init`` waits minutes for a head that is not there, and about ten for one where
    something else listens; an HTTP/2 greeting says so in seconds (a gRPC server answers it
    with its settings). Other forms (empty: this machine's cluster, ``ray://``), and clusters
    speaking TLS, are left to Ray.
    """
    problem = head_problem(address)
    if problem is None:
        problem = _gcs_problem(address)
    if problem is None:
        return
    if problem.startswith(_NOT_A_HEAD):
        raise BadInputError(
            f"cannot reach a Ray cluster at {address}: {problem}; pass the address "
            "`ray start --head` printed"
        )
    raise BadInputError(
        f"cannot reach a Ray cluster at {address}: {problem}; start one with `ray start "
        "--head` or pass --ray-address"
    )


_NOT_A_HEAD = "what listens there is not a Ray head"
_MAX_PORT = 65535
_GCS_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # what every driver asks a head first


def _gcs_problem(address: str, *, timeout: float = PROBE_SECONDS) -> str | None:
    """Why the gRPC server at ``HOST:PORT`` *address* is not a Ray head, or None.

    A head's GCS knows its cluster id; another gRPC server (the head's client server, an
    app's) answers that it has no such method, where ``ray.init`` retried for 20 seconds,
    printing its own errors. Any other answer (or none) is left to Ray.
    """
    if _host_port(address) is None:
        return None
    if os.environ.get("RAY_USE_TLS", "").lower() in {"1", "true"}:
        return None  # only the connection is tried (head_problem)
    grpc: Any = importlib.import_module("grpc")  # installed with Ray
    with grpc.insecure_channel(address) as channel:
        ask = channel.unary_unary(
            _GCS_METHOD, request_serializer=lambda _: b"", response_deserializer=bytes
        )
        try:
            ask(None, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return f"{_NOT_A_HEAD} (a gRPC server without the service of a Ray head)"
    return None


def _host_port(address: str) -> tuple[str, str] | None:
    """*address* as ``HOST`` and a ``PORT`` of digits; None for a form the probes cannot ask."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return None
    return host, port


def head_problem(address: str, *, timeout: float = PROBE_SECONDS) -> str | None:
    """Why no Ray head answers at ``HOST:PORT`` *address* (``Connection refused``...), or None.

    None too for the forms this cannot ask (see :func:`_probe`).
    """
    if (parts := _host_port(address)) is None:
        return None
    host, port = parts
    if int(port) > _MAX_PORT:
        return f"{port} is no port (at most {_MAX_PORT})"
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address, as in a URL
        host = host[1:-1]
    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        return str(exc.strerror or exc)
    with conn:
        if os.environ.get("RAY_USE_TLS", "").lower() in {"1", "true"}:
            return None
        answer = b""
        with contextlib.suppress(OSError):  # a reset or no answer: not a gRPC server
            conn.settimeout(timeout)
            conn.sendall(_HTTP2_GREETING)
            while len(answer) < _FRAME_HEADER and (chunk := conn.recv(_FRAME_HEADER)):
                answer += chunk
    if len(answer) < _FRAME_HEADER or answer[3] != _SETTINGS_FRAME:
        return f"{_NOT_A_HEAD} (it does not speak gRPC)"
    return None


class HeadWatch:
    """Whether the head of the cluster at *address* answers, asked every few seconds.

    ``lost`` says why the cluster counts as lost once it has not answered for *lost_after*:
    its GCS is gone (killed, its machine down), and with it every node soon (their raylets
    give up on it), so no actor of the run can be reached, placed or stopped through Ray.
    """

    def __init__(self, address: str, shown: str, *, lost_after: float) -> None:
        self.address, self._shown, self._lost_after = address, shown, lost_after
        self.lost: str | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="swarm-ray-head", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        heard = time.monotonic()
        while not self._closed.wait(HEAD_CHECK_SECONDS):
            problem = head_problem(self.address, timeout=HEAD_CHECK_SECONDS)
            if problem is None:
                heard = time.monotonic()
            elif time.monotonic() - heard > self._lost_after:
                silent = format_duration(self._lost_after)
                self.lost = (
                    f"the Ray cluster at {self._shown} was lost: its head did not answer for "
                    f"{silent} ({problem})"
                )
                return

    def check(self) -> None:
        """Raise ClusterLostError once the cluster counts as lost."""
        if self.lost is not None:
            raise ClusterLostError(self.lost)

    def answers(self, stop: threading.Event) -> bool:
        """Whether the head answers now, waiting while it does not; False: *stop* came first.

        Before an actor is made: Ray waits for a head that is not there to register it,
        for as long as it lets this process live. Raises ClusterLostError once it is lost.
        """
        while head_problem(self.address, timeout=HEAD_CHECK_SECONDS) is not None:
            self.check()
            if stop.wait(HEAD_CHECK_SECONDS):
                return False
        return True

    def close(self) -> None:
        """Stop asking."""
        self._closed.set()


def unreachable(spec: RunSettings, run_id: str) -> str | None:
    """What to do about *run_id*, a Ray run, when no cluster answers at its address; or None."""
    address = spec.ray_address or os.environ.get("RAY_ADDRESS", "")
    problem = head_problem(address, timeout=2.0)
    if problem is None:
        return None
    return (
        f"run {run_id} runs on the Ray cluster at {address}, which does not answer ({problem}):"
        " start a cluster there and run `swarm resume`, or end its tasks with `swarm stop`"
    )
