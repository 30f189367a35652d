"""Run a real Prometheus server for a test: free loopback port, generated config, clean stop.

The binary is Debian's ``prometheus`` (CI installs it). Where it is missing a test may skip,
with the reason, except when ``PHASEWATCH_REQUIRE_PROMETHEUS=1`` (CI): then it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

PROMETHEUS_BINARY = "/usr/bin/prometheus"


def prometheus_binary() -> str:
    """Path of the prometheus binary, or skip (fail under PHASEWATCH_REQUIRE_PROMETHEUS=1)."""
    path = PROMETHEUS_BINARY if os.access(PROMETHEUS_BINARY, os.X_OK) else shutil.which("prometheus")
    if path:
        return path
    reason = "the prometheus binary is not installed (apt-get install prometheus)"
    if os.environ.get("PHASEWATCH_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(f"PHASEWATCH_REQUIRE_PROMETHEUS=1 but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusServer:
    """A Prometheus scraping ``targets`` (``host:port`` strings) every ``scrape_interval``."""

    def __init__(self, workdir: Path, targets: Sequence[str], scrape_interval: str = "1s") -> None:
        self.binary = prometheus_binary()
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.workdir / "prometheus.yml"
        config = {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": scrape_interval},
            "scrape_configs": [
                {"job_name": "phasewatch", "metrics_path": "/metrics", "static_configs": [{"targets": list(targets)}]}
            ],
        }
        # JSON is valid YAML; no YAML library needed.
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = self.workdir / "prometheus.log"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "PrometheusServer":
        log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP API ------------------------------------------------------------------------

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/<path>``; returns ``data`` or raises with Prometheus's error."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def wait_until(self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0) -> list:
        """Poll the instant query ``expr`` until ``predicate(result)`` holds (a scrape landed)."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.2)
        raise AssertionError(
            f"Prometheus: {expr} never satisfied the condition in {timeout}s (last result {result});"
            f" targets: {self.targets()}"
        )
