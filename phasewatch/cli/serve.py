"""``phasewatch serve``: run the monitor as an HTTP service for many training runs.

Cheap to import (the CLI lists every subcommand): Starlette, uvicorn and the monitor are
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any

from phasewatch.cli.argtypes import whole_number

DEFAULT_PORT = 8765
DEFAULT_DB = "phasewatch.db"
TOKEN_ENV = "PHASEWATCH_TOKEN"


def _port(text: str) -> int:
    """argparse type of ``--port``: checked while parsing, so a bad value stops the command
    with the usage line before anything is opened or bound."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {port}")
    return port


def _db_path(text: str) -> Path:
    """argparse type of ``--db``: the store file may be new, its directory must exist. A typo
    in a directory name would otherwise create a directory tree and put the records there."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file path, got an empty string")
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{str(path.absolute())!r} is a directory; name the store file in it")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"directory {str(parent)!r} does not exist; create it first (phasewatch does not create "
            "directories for the store)"
        )
    return path


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
        "--port", type=_port, default=DEFAULT_PORT,
        help="port, 0..65535 (default: %(default)s; 0 picks a free one and prints it)",
    )
    storage = parser.add_mutually_exclusive_group()
    storage.add_argument(
        "--db", type=_db_path, default=None,
        help="SQLite store file (created if missing; its directory must exist); records are durable "
        f"in it before they are acknowledged (default: {DEFAULT_DB} in the current directory)",
    )
    storage.add_argument(
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
        "--max-body-bytes", type=whole_number(1), default=None,
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
        hint = "; choose another --port, or --port 0 for a free one" if exc.errno == errno.EADDRINUSE else ""
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror}{hint})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    """Check everything the user typed, bind, open the store, then serve until SIGINT/SIGTERM.

    The port is bound before the store is opened: a server that cannot listen leaves no
    store file behind, and reports only why it could not start ("stopped" is printed only
    for a server that was listening)."""
    import logging

    from phasewatch.server import DEFAULT_MAX_BODY_BYTES, check_bind, check_token, create_app

    token = check_token(_read_token(args))
    check_bind(args.host, token)
    max_body = DEFAULT_MAX_BODY_BYTES if args.max_body_bytes is None else args.max_body_bytes
    db_path = None if args.in_memory else args.db
    if db_path is None and not args.in_memory:
        try:
            db_path = _db_path(DEFAULT_DB)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"--db (default {DEFAULT_DB}): {exc}") from None

    sock = _bind(args.host, args.port)
    store = monitor = app = None
    listening = False
    try:
        import uvicorn

        from phasewatch.monitor import Monitor
        from phasewatch.store import Store

        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        store = None if db_path is None else Store(db_path, synchronous=args.synchronous)
        monitor = Monitor(store=store)
        app = create_app(monitor, token=token, max_body_bytes=max_body)
        import phasewatch.detect  # noqa: F401 - loads ruptures now, not during the first request

        _preload_step_statistics()

        # The event loop does many short I/O calls that each give up the GIL; the worker and
        # listener threads are CPU-bound. With the default 5 ms switch interval every socket
        # send/recv can wait that long to get the GIL back; 1 ms measured 10-30% more records/s
        # here (benchmarks/bench_serve_load.py).
        sys.setswitchinterval(0.001)

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
        server = uvicorn.Server(config)
        stop_signals: list[int] = []

        def stop(signum: int, frame: Any) -> None:
            # Only flags the server: it then shuts down gracefully, at any point of its
            # start-up. (Raising here could land inside an event-loop callback, where asyncio
            # would log and swallow the exception and the server would keep running.) uvicorn
            # puts its own handlers in place while it serves and re-raises the signal once it
            # has stopped; that lands here too, after our handlers are back.
            stop_signals.append(signum)
            server.should_exit = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            where = "memory only" if store is None else f"{Path(store.path).resolve()} (synchronous={args.synchronous})"
            print(
                f"phasewatch serve: listening on http://{shown}:{port} (store: {where}; "
                f"auth: {'bearer token required' if token else 'none, loopback only'})",
                flush=True,
            )
            listening = True
            if not stop_signals:
                server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        sock.close()
        if app is not None:
            app.close()  # commit what the group-commit writer still holds
        if monitor is not None:
            monitor.close()
        if store is not None:
            store.close()
        if listening:
            print("phasewatch serve: stopped", file=sys.stderr, flush=True)
    return 0


def _preload_step_statistics() -> None:
    """Import what parsing a step-statistics record needs before listening, so the first
    such request does not pay module imports on the event loop while every other request
    (``/healthz`` included) waits behind it. ``phasewatch.stats`` imports torch only where
    tensors are handled, so this is cheap and the service never loads torch."""
    import phasewatch.stats  # noqa: F401
