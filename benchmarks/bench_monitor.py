"""Cost of one monitor update with a long history, against refitting ruptures every step.

History: a seeded synthetic run of ``--steps`` (default 100,000) steps carrying every
canonical field (AR(1) noise around slowly varying levels, a planning-entropy rise at 60%
of the run). Everything runs on one core (affinity pinned where the OS allows, BLAS threads 1).

Measured, in this order:

1. in-memory ``Monitor``: every update timed in CPU time of the thread (the machine these
   figures come from is shared, and wall time would count other processes); the median per
   update is printed for the
   first 1,000 steps and for the last 1,000 steps before 10,000 and before ``--steps``
   (with that much history), and the ratio late/early shows whether the cost grows;
2. ``Monitor`` on a SQLite store holding the same history: the time to reopen it (restore =
   replay through a fresh detector), then ``--store-steps`` further updates with
   ``synchronous=FULL`` (fsync per commit; the default) and as many with ``NORMAL``, in wall
   time (an fsync is waiting, not computing), each interleaved with the same update on the
   in-memory monitor of part 1 (CPU time);
3. a late record (a step below the last one) with that history: its cost, rebuilt from the
   newest detector snapshot;
4. the baseline: ruptures ``Pelt(model="l2", jump=1)`` refit on the whole planning-entropy
   history at every step, timed at ``--pelt-history`` steps of history (Pelt is pure Python
   and at least quadratic here: at 100,000 steps one refit would take hours, so it is timed
   where it finishes; every monitor figure is compared with it).

Target: median update <= 100 us at 100,000 steps of history, not growing with history.

    python benchmarks/bench_monitor.py [--steps 100000] [--pelt-history 1000]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from phasewatch.monitor import Monitor  # noqa: E402
from phasewatch.record import StepRecord  # noqa: E402
from phasewatch.store import Store  # noqa: E402
from phasewatch.synthetic import ar1_noise  # noqa: E402

TARGET_US = 100.0


def pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned"


def synthetic_history(n: int, seed: int = 0) -> list[StepRecord]:
    """A long run with every canonical field; planning entropy rises from 60% of the run."""
    rng = np.random.default_rng(seed)

    def ar1(sd: float, phi: float = 0.5) -> np.ndarray:
        return ar1_noise(rng, n, phi, sd)

    t = np.arange(n, dtype=float)
    shift = int(0.6 * n)
    rise = np.clip((t - shift) / max(1, n // 20), 0, 1)
    execution = 0.15 + 0.2 * np.exp(-t / 50.0) + ar1(0.01)
    planning = 0.6 + 0.25 * rise + ar1(0.03)
    semantic = 2.0 + 0.5 * rise + ar1(0.05)
    columns = {
        "entropy/execution": execution,
        "entropy/planning": planning,
        "semantic_entropy": semantic,
        "entropy": 0.85 * execution + 0.15 * planning,
        "nll/execution": execution * 0.8 + ar1(0.01),
        "nll/planning": planning * 0.9 + ar1(0.02),
        "planning_frac": 0.12 + ar1(0.005),
        "reward": 0.4 + 0.2 * rise + ar1(0.05),
        "response_length": 600 + 300 * rise + ar1(30.0),
    }
    names = list(columns)
    rows = np.stack([columns[k] for k in names], axis=1).tolist()
    return [StepRecord(step=i, values=dict(zip(names, row))) for i, row in enumerate(rows)]


def timed_feed(
    monitor: Monitor, run: str, records: list[StepRecord], decisions: list | None = None,
    clock=time.perf_counter_ns,
) -> list[float]:
    """Per-update time in microseconds on ``clock`` (decisions appended to ``decisions``)."""
    out = []
    for r in records:
        t0 = clock()
        d = monitor.observe(run, r.step, r)
        out.append((clock() - t0) / 1000.0)
        if decisions is not None:
            decisions.append(d)
    return out


def timed_detector(records: list[StepRecord], clock=time.thread_time_ns) -> list[float]:
    """The bare RunDetector on the same records: what the monitor adds is the difference."""
    from phasewatch.detect import RunDetector

    detector = RunDetector()
    out = []
    for r in records:
        t0 = clock()
        detector.update(r)
        out.append((clock() - t0) / 1000.0)
    return out


def median_us(times: list[float]) -> float:
    return statistics.median(times)


def pelt_refit_seconds(values: np.ndarray, repeats: int = 1) -> float:
    import ruptures

    sigma = np.median(np.abs(np.diff(values))) / 0.6745 / np.sqrt(2) or 1e-3
    penalty = 2 * np.log(len(values)) * sigma**2
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        ruptures.Pelt(model="l2", min_size=2, jump=1).fit(values.reshape(-1, 1)).predict(pen=penalty)
        best = min(best, time.thread_time() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--store-steps", type=int, default=500, help="timed updates per synchronous mode")
    parser.add_argument("--pelt-history", type=int, default=1_000)
    parser.add_argument("--store-dir", default=None, help="directory for the SQLite file (default: a temp dir on disk)")
    args = parser.parse_args()
    if args.steps < 2_000:
        parser.error("--steps must be at least 2000")

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({pin_one_core()}), Python {platform.python_version()}")
    import ruptures  # noqa: F401  (the detector imports it on its first confirmation: keep
    # that one-off import, about a second, out of the per-update figures)

    n = args.steps
    extra = args.store_steps
    records = synthetic_history(n + 2 * extra + 1)
    history, tail = records[:n], records[n:]

    # 1. in-memory monitor -----------------------------------------------------------------
    monitor = Monitor()
    decisions: list = []
    t0 = time.perf_counter()
    times = timed_feed(monitor, "bench", history, decisions, clock=time.thread_time_ns)
    fill_s = time.perf_counter() - t0
    windows = [(0, 1_000)]
    if n >= 10_000:
        windows.append((9_000, 10_000))
    windows.append((n - 1_000, n))
    print(f"\n1. in-memory Monitor (CPU time per update), {n:,} updates in {fill_s:.1f} s (events: {len(monitor.events('bench'))},"
          f" phase {monitor.decision('bench').phase})")
    medians = {}
    for lo, hi in windows:
        medians[(lo, hi)] = median_us(times[lo:hi])
        print(f"   median update, steps {lo:>7,}-{hi:>7,}: {medians[(lo, hi)]:8.1f} us"
              f"  (p90 {np.percentile(times[lo:hi], 90):8.1f} us)")
    early, late = medians[windows[0]], medians[windows[-1]]
    print(f"   mean update over the whole run: {statistics.fmean(times):8.1f} us")
    print(f"   growth with history (last/first window): {late / early:.2f}x")
    k_det = min(n, 10_000)
    bare = timed_detector(history[:k_det])
    print(f"   bare RunDetector.update, steps 0-{k_det:,}: median {median_us(bare):8.1f} us"
          f" (monitor, same steps: {median_us(times[:k_det]):8.1f} us; monitor overhead"
          f" {median_us(times[:k_det]) - median_us(bare):+.1f} us)")
    print(f"   peak RSS so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    memory_median = late
    in_memory = monitor

    # 2. store-backed monitor ------------------------------------------------------------
    tmp = tempfile.TemporaryDirectory(dir=args.store_dir or str(Path.home()))
    path = Path(tmp.name) / "bench.db"
    with Store(path, synchronous="normal") as store:  # the same history and events, written fast
        t0 = time.perf_counter()
        for r, d in zip(history, decisions):
            store.append("bench", r, d.events)
        write_s = time.perf_counter() - t0
    store = Store(path, synchronous="full")
    monitor = Monitor(store)
    t0 = time.perf_counter()
    monitor.decision("bench")  # restores lazily: replays the history through a fresh detector
    restore_s = time.perf_counter() - t0
    # the in-memory monitor of part 1 takes the same steps, interleaved, so that load on the
    # machine hits both alike
    memory_tail: list[float] = []
    full: list[float] = []
    normal: list[float] = []
    for i, r in enumerate(tail[: 2 * extra]):
        if i == extra:
            store.set_synchronous("normal")
        memory_tail += timed_feed(in_memory, "bench", [r], clock=time.thread_time_ns)
        (full if i < extra else normal).extend(timed_feed(monitor, "bench", [r]))
    in_memory.close()
    print(f"\n2. Monitor with a SQLite store (wall time per update, fsync included;"
          f" {n:,} steps of history; writing them: {write_s:.1f} s)")
    print(f"   reopen (restore by replay of {n:,} records): {restore_s:.1f} s")
    memory_full, memory_normal = memory_tail[:extra], memory_tail[extra:]
    print(f"   steps {tail[0].step:,}-{tail[extra - 1].step:,}: synchronous=FULL (fsync each commit)"
          f" {median_us(full):8.1f} us wall (p90 {np.percentile(full, 90):8.1f});"
          f" in memory, same steps: {median_us(memory_full):6.1f} us CPU")
    print(f"   steps {tail[extra].step:,}-{tail[2 * extra - 1].step:,}: synchronous=NORMAL (no fsync)     "
          f" {median_us(normal):8.1f} us wall (p90 {np.percentile(normal, 90):8.1f});"
          f" in memory, same steps: {median_us(memory_normal):6.1f} us CPU")

    # 3. a late record -------------------------------------------------------------------
    last = tail[2 * extra - 1].step
    store.set_synchronous("full")
    # make room for a late record: it must be a step never stored, below the last one
    skipped = StepRecord(step=last + 10, values=dict(tail[-1].values))
    monitor.observe("bench", skipped.step, skipped)
    missing = StepRecord(step=last + 5, values=dict(tail[-1].values))
    t0 = time.perf_counter()
    monitor.observe("bench", missing.step, missing)
    late_ms = (time.perf_counter() - t0) * 1000
    print(f"\n3. late record (step {missing.step} after {skipped.step}) with {n:,} steps of history:"
          f" {late_ms:.1f} ms (replayed from the newest detector snapshot, every"
          f" {monitor.snapshot_every} steps)")
    monitor.close()
    store.close()
    tmp.cleanup()

    # 4. baseline --------------------------------------------------------------------------
    k = min(args.pelt_history, n)
    planning = np.array([r.values["entropy/planning"] for r in history[:k]])
    pelt_s = pelt_refit_seconds(planning)
    print(f"\n4. baseline: ruptures Pelt(l2, jump=1) refit on {k:,} steps of history:"
          f" {pelt_s * 1e3:,.1f} ms CPU per step")
    rows = [
        (f"monitor, in memory, {n:,} steps of history (CPU)", memory_median),
        ("monitor, store synchronous=FULL (wall)", median_us(full)),
        ("  in memory, same steps (CPU)", median_us(memory_full)),
        ("monitor, store synchronous=NORMAL (wall)", median_us(normal)),
        ("  in memory, same steps (CPU)", median_us(memory_normal)),
    ]
    print(f"\nsummary: median per update, and how many times cheaper than the baseline"
          f" (Pelt refit on only {k:,} steps of history, {pelt_s * 1e6:,.0f} us)")
    for label, value in rows:
        print(f"   {label:<50} {value:10.1f} us   {pelt_s * 1e6 / value:8.0f}x")
    print(f"   target <= {TARGET_US:.0f} us in memory: {'met' if memory_median <= TARGET_US else 'NOT met'}"
          f" ({memory_median / TARGET_US:.2f}x the target);"
          f" growth with history {late / early:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
