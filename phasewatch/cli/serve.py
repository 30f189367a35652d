"""``phasewatch serve``: run the monitor as an HTTP service for many training runs.

Cheap to import (the CLI lists every subcommand): Starlette, uvicorn and the monitor are
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

DEFAULT_PORT = 8765
DEFAULT_DB = "phasewatch.db"
TOKEN_ENV = "PHASEWATCH_TOKEN"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the monitor as an HTTP service (many runs, SQLite store, /metrics)",
        description=(
            "Serve the phasewatch monitor over HTTP. Trainers post step records to "
            "POST /v1/runs/{run}/steps and get back the run's phase and HICRA alpha; "
            "Prometheus scrapes /metrics. Binds 127.0.0.1 unless told otherwise; any other "
            "address needs a bearer token."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT,
        help="port (default: %(default)s; 0 picks a free one and prints it)",
    )
    parser.add_argument(
        "--db", default=DEFAULT_DB,
        help="SQLite store; records are durable in it before they are acknowledged (default: %(default)s)",
    )
    parser.add_argument(
        "--in-memory", action="store_true",
        help="keep records in memory only (nothing survives a restart; for trials)",
    )
    parser.add_argument(
        "--token", default=None,
        help=f"bearer token clients must send (default: ${TOKEN_ENV}). Prefer the environment "
        "variable or --token-file: a command-line argument is visible to other users in `ps`.",
    )
    parser.add_argument("--token-file", default=None, help="read the bearer token from this file")
    parser.add_argument(
        "--synchronous", choices=("full", "normal"), default="full",
        help="SQLite durability: full = fsync each commit (survives power loss), normal = "
        "survives a crash of this process only, faster (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=None,
        help="largest request body accepted (default: 4 MiB)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (method, path, status)")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"),
        help="log level (default: %(default)s)",
    )
    parser.set_defaults(func=run)


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token and args.token_file:
        raise ValueError("give --token or --token-file, not both")
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise ValueError(f"--token-file: cannot read {args.token_file!r} ({exc.strerror})") from None
        if not token:
            raise ValueError(f"--token-file: {args.token_file!r} is empty")
        return token
    return args.token or os.environ.get(TOKEN_ENV) or None


def _bind(host: str, port: int) -> Any:
    """Bind the listening socket ourselves, so ``--port 0`` can report the port it got."""
    import socket

    if not 0 <= port <= 65535:
        raise ValueError(f"--port: expected 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"--host: cannot resolve {host!r} ({exc.strerror})") from None
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    import logging

    from phasewatch.server import DEFAULT_MAX_BODY_BYTES, check_bind, check_token, create_app

    token = check_token(_read_token(args))
    check_bind(args.host, token)
    max_body = DEFAULT_MAX_BODY_BYTES if args.max_body_bytes is None else args.max_body_bytes
    if max_body < 1:
        raise ValueError(f"--max-body-bytes: must be positive, got {max_body}")

    import uvicorn

    from phasewatch.monitor import Monitor
    from phasewatch.store import Store

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import phasewatch.detect  # noqa: F401 - loads ruptures now, not during the first request

    # The event loop does many short I/O calls that each give up the GIL; the worker and
    # listener threads are CPU-bound. With the default 5 ms switch interval every socket
    # send/recv can wait that long to get the GIL back; 1 ms measured 10-30% more records/s
    # here (benchmarks/bench_serve_load.py).
    sys.setswitchinterval(0.001)

    store = None if args.in_memory else Store(args.db, synchronous=args.synchronous)
    monitor = Monitor(store=store)
    sock = None
    app = None
    try:
        app = create_app(monitor, token=token, max_body_bytes=max_body)
        sock = _bind(args.host, args.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        where = "memory only" if store is None else f"{store.path} (synchronous={args.synchronous})"
        print(
            f"phasewatch serve: listening on http://{shown}:{port} (store: {where}; "
            f"auth: {'bearer token required' if token else 'none, loopback only'})",
            flush=True,
        )
        config = uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=args.access_log,
            lifespan="off",
            timeout_keep_alive=30,
            server_header=False,
            # no proxy in front is trusted to name the client; skipping the middleware saves
            # a few microseconds per request
            proxy_headers=False,
        )
        # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal; these
        # handlers turn that re-raise into an orderly exit, so the store is closed cleanly.
        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except _Stop:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        if sock is not None:
            sock.close()
        if app is not None:
            app.close()  # commit what the group-commit writer still holds
        monitor.close()
        if store is not None:
            store.close()
        print("phasewatch serve: stopped", file=sys.stderr, flush=True)
    return 0


class _Stop(Exception):
    """Raised by the signal handler after uvicorn's graceful shutdown."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stop()
