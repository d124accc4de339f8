"""Serving the explorer with uvicorn on a socket bound before the model loads."""

from __future__ import annotations

import ipaddress
import socket

import uvicorn

from taskvec.errors import TaskvecError
from taskvec.explore.app import create_app
from taskvec.explore.jobs import JobRunner
from taskvec.models.loading import LoadedModel


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TaskvecError(f"--host {host!r} is not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise TaskvecError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:
        host = "127.0.0.1" if sock.family == socket.AF_INET else "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(lm: LoadedModel, sock: socket.socket) -> None:
    """Serve the explorer for ``lm`` on ``sock`` until interrupted (uvicorn handles Ctrl-C)."""
    runner = JobRunner()
    config = uvicorn.Config(create_app(lm, runner), log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        runner.shutdown()
        sock.close()
