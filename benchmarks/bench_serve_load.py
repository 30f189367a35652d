"""Load on ``phasewatch serve``: sustained ingest from many concurrent simulated runs.

Starts a real ``phasewatch serve`` process on 127.0.0.1 with a fresh SQLite store, then drives
it from this process with N concurrent simulated runs (asyncio, one kept-alive HTTP/1.1
connection per run, each posting its next records as soon as the previous POST is answered).
Prints records/s and latency percentiles, each next to baselines measured in the same run:

- the same load generator against ``GET /healthz`` of the same server (a no-op endpoint:
  what the HTTP stack alone allows here);
- the raw SQLite insert rate of phasewatch's Store with the same durability setting (what
  the disk allows for one commit per record);
- an in-process Monitor (same store settings, Prometheus exporter attached) fed the same
  batches: the detection and storage cost the HTTP layer sits on.

Second part: the trainer side. A simulated training loop (fixed numpy work per step) calls
``MonitorClient.submit`` every step with the server up, unreachable (connection refused) and
stalled (accepts, never answers); step time is compared with the same loop without a client.

Usage: python benchmarks/bench_serve_load.py [--runs 50] [--seconds 10] [--batch 1 8]
The target is >= 2,000 records/s on a 2-core machine where the load generator shares the
cores with the server.
"""

from __future__ import annotations

import os

# single-threaded BLAS: the simulated training step must cost the same every time, and a
# multithreaded BLAS on a shared 2-core machine makes step times swing by 10x
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phasewatch.record import StepRecord  # noqa: E402
from phasewatch.synthetic import SITUATIONS, generate  # noqa: E402

TARGET_RECORDS_PER_S = 2_000


def start_server(db: Path, synchronous: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "phasewatch", "serve", "--port", "0", "--db", str(db), "--log-level", "warning",
         "--synchronous", synchronous],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "listening on" in line:
            return proc, int(line.split("http://127.0.0.1:")[1].split()[0])
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("phasewatch serve did not start")


def run_records(index: int, length: int) -> list[dict]:
    situation = SITUATIONS[index % len(SITUATIONS)]
    run = generate(situation, seed=index, length=length)
    return [r.to_json() for r in run.records()]


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def simulated_run(port: int, run: str, records: list[dict], batch: int, stop_at: float,
                        latencies: list[float], noop: bool) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        while time.perf_counter() < stop_at and sent < len(records):
            chunk = records[sent:sent + batch]
            if noop:
                request = _request("GET", "/healthz")
            else:
                request = _request("POST", f"/v1/runs/{run}/steps", json.dumps(chunk).encode())
            started = time.perf_counter()
            status = await _post(reader, writer, request)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise SystemExit(f"{run}: HTTP {status}")
            sent += len(chunk)
    finally:
        writer.close()
    return sent


async def load(port: int, data: list[list[dict]], batch: int, seconds: float, noop: bool,
               tag: str) -> tuple[float, list[float]]:
    """Every simulated run posts its records in order until ``seconds`` have passed."""
    runs = len(data)
    latencies: list[float] = []
    started = time.perf_counter()
    stop_at = started + seconds
    counts = await asyncio.gather(*(
        simulated_run(port, f"{tag}-{i}", data[i], batch, stop_at, latencies, noop) for i in range(runs)
    ))
    elapsed = time.perf_counter() - started
    units = len(latencies) if noop else sum(counts)
    return units / elapsed, latencies


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc): the server's cost per record,
    which, unlike a rate, does not depend on how busy the rest of the machine is."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1e3


def sqlite_baseline(directory: Path, synchronous: str, n: int = 3_000) -> float:
    from phasewatch.store import Store

    store = Store(directory / "baseline.db", synchronous=synchronous)
    records = [StepRecord.from_flat(r) for r in run_records(0, n)]
    started = time.perf_counter()
    for record in records:
        store.append("baseline", record)
    rate = len(records) / (time.perf_counter() - started)
    store.close()
    return rate


def in_process_baseline(directory: Path, synchronous: str, data: list[list[dict]], batch: int,
                        per_run: int = 120) -> float:
    """The same records through an in-process Monitor (store + Prometheus exporter, as the
    server has), batch by batch, runs interleaved: the ceiling the HTTP layer sits on."""
    from phasewatch.exporter import PrometheusExporter
    from phasewatch.monitor import Monitor
    from phasewatch.store import Store

    records = [[StepRecord.from_flat(r) for r in run[:per_run]] for run in data]
    with Monitor(store=Store(directory / f"inproc-{batch}.db", synchronous=synchronous)) as monitor:
        monitor.add_listener(PrometheusExporter())
        started = time.perf_counter()
        for k in range(0, per_run, batch):
            for i, run in enumerate(records):
                monitor.observe_many(f"run-{i}", run[k:k + batch])
        monitor.flush(60)
        elapsed = time.perf_counter() - started
    return sum(len(r) for r in records) / elapsed


# -- trainer side ---------------------------------------------------------------------------

def training_loop(steps: int, submit) -> tuple[list[float], float]:
    """Fixed work per step (matrix products of a constant matrix), then hand over the record.
    Returns each step's wall time and the process's CPU seconds per step (the sender thread's
    work included: that is the client's whole cost to the trainer)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 300))
    times = []
    cpu_started = time.process_time()
    for step in range(steps):
        started = time.perf_counter()
        for _ in range(4):
            b = a @ a
        if submit is not None:
            submit(StepRecord(step, {"entropy": float(b[0, 0]), "entropy/planning": 0.5}))
        times.append(time.perf_counter() - started)
    return times, (time.process_time() - cpu_started) / steps


def _target(label: str, port: int) -> tuple[str, socket.socket | None]:
    if label == "server up":
        return f"http://127.0.0.1:{port}", None
    if label == "connection refused":
        with socket.socket() as s:  # bound then closed: nothing listens there
            s.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{s.getsockname()[1]}", None
    blackhole = socket.socket()  # accepts connections (kernel backlog), never answers
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(8)
    return f"http://127.0.0.1:{blackhole.getsockname()[1]}", blackhole


def trainer_side(port: int, steps: int, rounds: int = 3) -> None:
    from phasewatch.client import MonitorClient

    labels = ("no client", "server up", "connection refused", "server stalled")
    print(f"trainer side: {steps} simulated training steps x {rounds} interleaved rounds; "
          "MonitorClient.submit() every step")
    step_medians: dict[str, list[float]] = {label: [] for label in labels}
    step_cpu: dict[str, list[float]] = {label: [] for label in labels}
    submit_times: dict[str, list[float]] = {label: [] for label in labels}
    submit_cpu: dict[str, list[float]] = {label: [] for label in labels}
    counters = {}
    for round_index in range(rounds):
        for label in labels:
            if label == "no client":
                times, cpu = training_loop(steps, None)
                step_medians[label].append(statistics.median(times))
                step_cpu[label].append(cpu)
                continue
            url, blackhole = _target(label, port)
            client = MonitorClient(url, f"trainer-{round_index}-{labels.index(label)}", timeout_s=30,
                                   backoff_initial_s=0.05, backoff_max_s=0.5)
            times_here = submit_times[label]
            cpu_here = submit_cpu[label]

            def timed_submit(record, client=client, times_here=times_here, cpu_here=cpu_here):
                t, c = time.perf_counter(), time.thread_time()
                client.submit(record)
                times_here.append(time.perf_counter() - t)
                cpu_here.append(time.thread_time() - c)

            times, cpu = training_loop(steps, timed_submit)
            step_medians[label].append(statistics.median(times))
            step_cpu[label].append(cpu)
            counters[label] = client.counters()
            client.close(timeout=10 if label == "server up" else 0.2)
            if blackhole is not None:
                blackhole.close()
    base = statistics.median(step_medians["no client"])
    base_cpu = statistics.median(step_cpu["no client"])
    print(f"  no client:           median step {base * 1e3:7.3f} ms, process CPU {base_cpu * 1e3:.3f} ms/step")
    for label in labels[1:]:
        med = statistics.median(step_medians[label])
        cpu = statistics.median(step_cpu[label])
        k = counters[label]
        print(f"  {label + ':':20s} median step {med * 1e3:7.3f} ms (x{med / base:.3f} of no client), "
              f"process CPU {cpu * 1e3:.3f} ms/step (x{cpu / base_cpu:.3f}); "
              f"submit() wall p50 {np.percentile(submit_times[label], 50) * 1e6:.1f} us, "
              f"p99 {np.percentile(submit_times[label], 99) * 1e6:.1f} us, "
              f"CPU p99 {np.percentile(submit_cpu[label], 99) * 1e6:.1f} us; last round: sent {k.sent}, "
              f"pending {k.pending}, failed attempts {k.failed_attempts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--trainer-steps", type=int, default=300)
    parser.add_argument("--length", type=int, default=3_000, help="records available per simulated run")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; phasewatch serve "
          f"with synchronous={args.synchronous}; {args.runs} concurrent simulated runs; load generator in "
          "this process")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        raw = sqlite_baseline(directory, args.synchronous)
        proc, port = start_server(directory / "load.db", args.synchronous)
        try:
            data = [run_records(i, args.length) for i in range(args.runs)]
            cpu0 = process_cpu_s(proc.pid)
            noop_rate, noop_lat = asyncio.run(load(port, data, 1, args.seconds / 2, True, "noop"))
            noop_cpu = (process_cpu_s(proc.pid) - cpu0) / len(noop_lat)
            print(f"baseline: raw Store.append (SQLite, one commit per record): {raw:8.0f} records/s")
            print(f"baseline: GET /healthz (no-op) with the same load:           {noop_rate:8.0f} requests/s, "
                  f"p50 {pct(noop_lat, 50):.1f} ms, p99 {pct(noop_lat, 99):.1f} ms; server CPU "
                  f"{noop_cpu * 1e3:.3f} ms/request")
            trainer_side(port, args.trainer_steps)
            print()
            for batch in args.batch:
                ceiling = in_process_baseline(directory, args.synchronous, data, batch)
                cpu0 = process_cpu_s(proc.pid)
                rate, lat = asyncio.run(load(port, data, batch, args.seconds, False, f"b{batch}"))
                cpu_per_record = (process_cpu_s(proc.pid) - cpu0) / (len(lat) * batch)
                verdict = "meets" if rate >= TARGET_RECORDS_PER_S else "BELOW"
                print(f"ingest, {batch:3d} record(s) per POST: {rate:8.0f} records/s "
                      f"({rate / ceiling:.2f}x an in-process Monitor's {ceiling:.0f}/s on the same batches, "
                      f"{rate / noop_rate:.2f}x the no-op request rate, {rate / raw:.2f}x raw SQLite); "
                      f"latency p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms; server CPU "
                      f"{cpu_per_record * 1e3:.3f} ms/record; {verdict} the {TARGET_RECORDS_PER_S} records/s target")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
