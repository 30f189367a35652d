"""Real servers for the service tests: uvicorn in a thread, or ``phasewatch serve`` as a process.

Everything binds 127.0.0.1 only. Each helper stops what it started (by its own handle,
never by name) and bounds every wait with a deadline, so a broken server fails the test
instead of hanging it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port that was free a moment ago (for restarting a server on the same address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.01, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class ThreadServer:
    """uvicorn serving an ASGI app from a daemon thread on 127.0.0.1 (real sockets, real HTTP)."""

    def __init__(self, app: Any, port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn to start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        if self.thread.is_alive():
            raise AssertionError("uvicorn thread did not stop")

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ServeProcess:
    """``python -m phasewatch serve`` as a child process on 127.0.0.1."""

    def __init__(self, db: Path, port: int = 0, *extra: str, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.requested_port = port
        self.extra = extra
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 30.0) -> "ServeProcess":
        cmd = [sys.executable, "-m", "phasewatch", "serve", "--port", str(self.requested_port),
               "--db", str(self.db), "--log-level", "warning", *self.extra]
        env = dict(os.environ, **(self.env or {}))
        self.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        line_holder: list[str] = []

        def read_first() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if "listening on" in line:
                    line_holder.append(line)
                    break

        reader = threading.Thread(target=read_first, daemon=True)
        reader.start()
        reader.join(timeout)
        if not line_holder:
            self.kill()
            raise AssertionError(f"phasewatch serve did not start: {''.join(self.output)}")
        self.port = int(line_holder[0].split("http://127.0.0.1:")[1].split()[0])
        # keep draining output so the child never blocks on a full pipe
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs in the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()


def request(url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
            raw: bytes | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    """One plain HTTP request with the standard library; returns (status, decoded JSON or None)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        payload = response.read()
        try:
            return response.status, json.loads(payload) if payload else None
        except ValueError:
            return response.status, payload.decode("utf-8", "replace")
    finally:
        conn.close()


def shift_records(seed: int = 1, situation: str = "clear_shift") -> list[Any]:
    """A synthetic run with a real execution-to-planning shift (phasewatch.synthetic)."""
    from phasewatch.synthetic import generate

    return list(generate(situation, seed).records())


def reference_state(records: list[Any], schedule: Any = None) -> dict[str, Any]:
    """What an uninterrupted in-process monitor concludes from ``records`` fed in order."""
    from phasewatch.monitor import Monitor

    with Monitor() as monitor:
        if schedule is not None:
            monitor.set_schedule("ref", schedule)
        for record in records:
            monitor.observe("ref", record.step, record)
        decision = monitor.decision("ref")
        return {
            "steps": len(records),
            "last_step": records[-1].step,
            "phase": decision.phase,
            "alpha": decision.alpha,
            "shift_step": decision.shift_step,
            "events": [e.to_json() for e in monitor.events("ref")],
        }
