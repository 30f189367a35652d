"""Load on ``phasewatch serve``: sustained ingest from many concurrent simulated runs.

Starts a real ``phasewatch serve`` process on 127.0.0.1 with a fresh SQLite store
(``synchronous=full``: every acknowledged record has been fsynced) and drives it from this
process, on the same cores, with N concurrent simulated runs. Every run posts its own
synthetic training run (``phasewatch.synthetic``) from step 0, in step order. Three loads:

- **one record per POST**: each run has one kept-alive HTTP/1.1 connection (asyncio; uvloop
  when installed) and posts its next record as soon as the previous POST is answered;
- **fixed batches** (``--batch``): the same with k records per POST;
- **client batching**: each run is a real :class:`~phasewatch.client.MonitorClient` fed at a
  fixed pace (``--offered`` records/s over all runs, like trainers stepping); the client sends
  whatever it has buffered (at most one request per 0.1 s per run, its default). Reports the
  records/s acknowledged and the latency of a record from ``submit()`` to its acknowledgement.

Before each load every run posts its first ``--warmup-steps`` records unmeasured (the detectors
calibrate over a run's first ~100 steps at about twice their later cost; 50 runs doing that at
the same moment is a start-up transient, not sustained ingest). ``--warmup-steps 0`` measures
that transient instead.

Each figure is printed next to baselines measured in the same run: the same load generator
against ``GET /healthz`` of the same server (what the HTTP stack alone allows here), an
in-process Monitor fed the same records (store and Prometheus exporter attached, no HTTP:
the ceiling the HTTP layer sits on), the bare detector on the same records (what detection
alone costs), and the 2,000 records/s target. Server CPU per record (from /proc) is printed
too: unlike a rate, it does not depend on how busy the rest of the machine is.

Second part: the trainer side. A simulated training loop (fixed numpy work per step) calls
``MonitorClient.submit`` every step with the server up, unreachable (connection refused) and
stalled (accepts, never answers); step time is compared with the same loop without a client.

Usage: python benchmarks/bench_serve_load.py [--runs 50] [--seconds 8] [--batch 1 8]
       [--offered 2000 3000] [--warmup-steps 300] [--synchronous full] [--trainer-steps 200]
"""

from __future__ import annotations

import os

# single-threaded BLAS: the simulated training step must cost the same every time, and a
# multithreaded BLAS on a shared 2-core machine makes step times swing by 10x
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
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
    said: list[str] = []
    for line in proc.stdout:
        if "listening on" in line:
            threading.Thread(target=_drain, args=(proc,), daemon=True).start()
            return proc, int(line.split("http://127.0.0.1:")[1].split()[0])
        said.append(line)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("phasewatch serve did not start:\n" + "".join(said[-30:]))


def _drain(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:  # the server's own warnings, shown as they come
        sys.stderr.write("  [serve] " + line)


def run_records(index: int, length: int) -> list[dict]:
    situation = SITUATIONS[index % len(SITUATIONS)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # exp overflow in one situation's shape
        run = generate(situation, seed=index, length=length)
    return [r.to_json() for r in run.records()]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1e3 if values else float("nan")


def run_async(coro):
    """uvloop when installed (a cheaper load generator leaves more CPU to the server)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# -- closed-loop HTTP load ---------------------------------------------------------------------

async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
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
                        latencies: list[float], noop: bool, start: int = 0) -> int:
    """One run's poster: records ``start``, ``start + 1``... in order, ``batch`` per POST,
    the next POST as soon as the previous one is answered. Returns the records sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        while time.perf_counter() < stop_at and start + sent < len(records):
            chunk = records[start + sent:start + sent + batch]
            if noop:
                request = _request("GET", "/healthz")
            else:
                body = json.dumps(chunk[0] if batch == 1 else chunk).encode()
                request = _request("POST", f"/v1/runs/{run}/steps", body)
            started = time.perf_counter()
            status = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise SystemExit(f"{run}: HTTP {status}")
            sent += len(chunk)
    finally:
        writer.close()
    return sent


async def closed_loop(port: int, data: list[list[dict]], batch: int, seconds: float, noop: bool,
                      tag: str, start: int = 0) -> tuple[float, list[float], list[int]]:
    """Every simulated run posts its records in order from ``start`` until ``seconds`` have
    passed. Returns (units/s, request latencies, records sent per run)."""
    latencies: list[float] = []
    started = time.perf_counter()
    stop_at = started + seconds
    counts = await asyncio.gather(*(
        simulated_run(port, f"{tag}-{i}", run, batch, stop_at, latencies, noop, start)
        for i, run in enumerate(data)
    ))
    elapsed = time.perf_counter() - started
    units = len(latencies) if noop else sum(counts)
    return units / elapsed, latencies, list(counts)


def warm_up(port: int, data: list[list[dict]], steps: int, tag: str) -> None:
    """Post every run's first ``steps`` records (100 per POST, not measured), so the measured
    load is the runs' sustained state rather than every detector's start-up at once."""
    if steps > 0:
        run_async(closed_loop(port, [run[:steps] for run in data], 100, 3600.0, False, tag))


def measure_closed(proc: subprocess.Popen, port: int, data: list[list[dict]], batch: int, seconds: float,
                   noop: bool, tag: str, start: int = 0) -> dict:
    cpu0, gen0 = process_cpu_s(proc.pid), own_cpu_s()
    rate, latencies, counts = run_async(closed_loop(port, data, batch, seconds, noop, tag, start))
    units = len(latencies) if noop else sum(counts)
    return {
        "rate": rate, "p50": pct(latencies, 50), "p99": pct(latencies, 99), "counts": counts,
        "server_cpu": (process_cpu_s(proc.pid) - cpu0) / units,
        "generator_cpu": (own_cpu_s() - gen0) / units,
    }


# -- client batching: real MonitorClients fed at a fixed pace -----------------------------------

def client_batching(port: int, data: list[list[dict]], offered: float, seconds: float, tag: str,
                    proc: subprocess.Popen, start: int = 0) -> dict:
    """``len(data)`` MonitorClients, each fed ``offered / len(data)`` records per second (as a
    trainer that finishes a step that often), sending whatever they buffered. The transport's
    ``send`` is timed to know when each record was acknowledged (instrumentation only: the
    real client and the real server do the work)."""
    from phasewatch.client import MonitorClient

    runs = len(data)
    records = [[StepRecord.from_flat(r) for r in run[start:]] for run in data]
    clients = [MonitorClient(f"http://127.0.0.1:{port}", f"{tag}-{i}", max_buffer=1_000_000, timeout_s=120)
               for i in range(runs)]
    submitted_at: list[dict[int, float]] = [{} for _ in range(runs)]
    acked: list[tuple[float, int, float]] = []  # (ack time, records, request latency)
    record_latency: list[float] = []
    lock = threading.Lock()

    for i, client in enumerate(clients):
        original = client.transport.send

        def timed_send(batch, original=original, submitted=submitted_at[i]):
            started = time.perf_counter()
            decision = original(batch)
            done = time.perf_counter()
            with lock:
                acked.append((done, len(batch), done - started))
                record_latency.extend(done - submitted[r.step] for r in batch)
            return decision

        client.transport.send = timed_send

    interval = runs / offered  # seconds between two records of one run
    cpu0, gen0 = process_cpu_s(proc.pid), own_cpu_s()
    started = time.perf_counter()
    stop_at = started + seconds
    produced = 0
    next_index = [0] * runs
    while True:  # every 5 ms, submit what is due: record k of run i at started + (k + i / runs) * interval
        now = time.perf_counter()
        if now >= stop_at:
            break
        for i, client in enumerate(clients):
            due = int((now - started) / interval - i / runs) + 1
            while next_index[i] < min(due, len(records[i])):
                record = records[i][next_index[i]]
                submitted_at[i][record.step] = time.perf_counter()
                client.submit(record)
                next_index[i] += 1
                produced += 1
        time.sleep(0.005)
    with lock:
        in_window = sum(n for t, n, _ in acked if t <= stop_at)
    server_cpu = process_cpu_s(proc.pid) - cpu0
    generator_cpu = own_cpu_s() - gen0
    for client in clients:
        client.close(timeout=120)
    with lock:
        total = sum(n for _, n, _ in acked)
        requests = [lat for _, _, lat in acked]
        latencies = list(record_latency)
    return {
        "offered": produced / seconds, "rate": in_window / seconds, "acked": total, "produced": produced,
        "batch_mean": total / max(1, len(requests)), "request_p99": pct(requests, 99),
        "record_p50": pct(latencies, 50), "record_p99": pct(latencies, 99),
        "server_cpu": server_cpu / max(1, in_window), "generator_cpu": generator_cpu / max(1, in_window),
        "dropped": sum(c.counters().dropped for c in clients),
        "rejected": sum(c.counters().rejected for c in clients),
        "counts": next_index,
    }


# -- baselines without HTTP ---------------------------------------------------------------------

def same_work_baselines(directory: Path, synchronous: str, data: list[list[dict]], start: int,
                        counts: list[int], batch: int, name: str) -> tuple[float, float]:
    """CPU seconds per record, on exactly the records a load posted (run i: steps
    ``start .. start + counts[i] - 1``, after the same warm-up, untimed):

    - an in-process Monitor with the same store settings and a Prometheus exporter, fed
      ``batch`` records per run per group commit (what the server does, without HTTP);
    - the bare detector (``RunDetector.update``), runs interleaved as the server sees them.
    """
    from phasewatch.detect import RunDetector
    from phasewatch.exporter import PrometheusExporter
    from phasewatch.monitor import Monitor
    from phasewatch.store import Store

    records = [[StepRecord.from_flat(r) for r in run[:start + n]] for run, n in zip(data, counts)]
    total = sum(counts)
    longest = max(counts)
    with Monitor(store=Store(directory / f"{name}.db", synchronous=synchronous)) as monitor:
        monitor.add_listener(PrometheusExporter())
        for k in range(0, start, 100):
            monitor.observe_batches([(f"run-{i}", run[k:min(k + 100, start)]) for i, run in enumerate(records)])
        monitor.flush(600)
        started = time.process_time()
        for k in range(start, start + longest, batch):
            monitor.observe_batches([(f"run-{i}", run[k:k + batch]) for i, run in enumerate(records)
                                     if k < len(run)])
        monitor.flush(600)
        in_process = (time.process_time() - started) / total
    detectors = [RunDetector() for _ in records]
    for detector, run in zip(detectors, records):
        for record in run[:start]:
            detector.update(record)
    started = time.process_time()
    for k in range(start, start + longest):
        for detector, run in zip(detectors, records):
            if k < len(run):
                detector.update(run[k])
    detector_cpu = (time.process_time() - started) / total
    return in_process, detector_cpu


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
    import logging

    from phasewatch.client import MonitorClient

    logging.getLogger("phasewatch.client").setLevel(logging.CRITICAL)  # outages are on purpose here
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


def verdict(rate: float) -> str:
    return f"{rate / TARGET_RECORDS_PER_S:.2f}x the {TARGET_RECORDS_PER_S:,} records/s target"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 8],
                        help="records per POST of the closed-loop loads")
    parser.add_argument("--offered", type=float, nargs="*", default=[2_000.0, 3_000.0],
                        help="records/s fed to the MonitorClients (all runs together), one load per value: "
                        "the target itself (does the server keep up, and how late are the records?) and "
                        "more than it can take (what does it sustain then?)")
    parser.add_argument("--warmup-steps", type=int, default=300,
                        help="steps every run posts (unmeasured) before a load is measured; 0 measures "
                        "50 runs starting together from step 0, when every detector calibrates at once")
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--trainer-steps", type=int, default=200, help="0 skips the trainer-side part")
    parser.add_argument("--length", type=int, default=3_000, help="records available per simulated run")
    args = parser.parse_args()

    http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"  # what uvicorn picks
    warm = args.warmup_steps
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; phasewatch serve "
          f"with synchronous={args.synchronous}, HTTP parser {http_impl}; {args.runs} concurrent simulated "
          f"runs, measured from step {warm} on{' (after an unmeasured warm-up)' if warm else ''}, in step order; "
          "load generator in this process, on the same cores")
    data = [run_records(i, args.length) for i in range(args.runs)]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        proc, port = start_server(directory / "load.db", args.synchronous)
        try:
            noop = measure_closed(proc, port, data, 1, args.seconds / 2, True, "noop")
            print(f"baseline: GET /healthz (no-op), same generator: {noop['rate']:8,.0f} requests/s, "
                  f"p50 {noop['p50']:.1f} ms, p99 {noop['p99']:.1f} ms; server CPU {noop['server_cpu'] * 1e3:.3f} "
                  f"ms/request, generator CPU {noop['generator_cpu'] * 1e3:.3f} ms/request")
            results = []
            for batch in args.batch:  # every load has runs of its own (new run ids)
                warm_up(port, data, warm, f"b{batch}")
                results.append((f"{batch:3d} record(s) per POST", batch,
                                measure_closed(proc, port, data, batch, args.seconds, False, f"b{batch}", warm)))
            for offered in args.offered:
                tag = f"client{offered:.0f}"
                warm_up(port, data, warm, tag)
                c = client_batching(port, data, offered, args.seconds, tag, proc, warm)
                label = f"MonitorClient batching at {offered:,.0f}/s offered"
                results.append((label, max(1, round(c["batch_mean"])), c))
            print(f"load average at the end of the loads: {os.getloadavg()[0]:.1f}")
            print()
            for label, batch, m in results:
                in_process, detector = same_work_baselines(directory, args.synchronous, data, warm, m["counts"],
                                                           batch, f"baseline-{len(label)}-{batch}")
                line = (f"ingest, {label}: {m['rate']:8,.0f} records/s = {verdict(m['rate'])}, "
                        f"{m['rate'] / noop['rate']:.2f}x the no-op request rate; ")
                if "record_p99" in m:
                    line += (f"{m['rate'] / m['offered']:.0%} of the offered {m['offered']:,.0f}/s, "
                             f"{m['batch_mean']:.1f} records per POST; record "
                             f"latency submit->ack p50 {m['record_p50']:.1f} ms, p99 {m['record_p99']:.1f} ms, "
                             f"request p99 {m['request_p99']:.1f} ms; ")
                else:
                    line += f"request latency p50 {m['p50']:.1f} ms, p99 {m['p99']:.1f} ms; "
                line += (f"server CPU {m['server_cpu'] * 1e3:.3f} ms/record = {m['server_cpu'] / in_process:.2f}x "
                         f"an in-process Monitor on the same records ({in_process * 1e3:.3f}), of which the "
                         f"detector alone {detector * 1e3:.3f} ms ({detector / m['server_cpu']:.0%}); "
                         f"generator CPU {m['generator_cpu'] * 1e3:.3f} ms/record")
                if "dropped" in m:
                    line += (f"; after close {m['acked']:,}/{m['produced']:,} acknowledged, "
                             f"dropped {m['dropped']}, rejected {m['rejected']}")
                print(line)
            if args.trainer_steps > 0:
                print()
                trainer_side(port, args.trainer_steps)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
