"""How much does building StepStats add to a training step? Target: under 1 ms on CPU for a
(64, 1024) micro-batch.

Run: python benchmarks/bench_stats.py [--batch 64] [--tokens 1024] [--rounds 15]

Everything is measured in the same run, interleaved round by round so that load from other
processes hits all candidates alike; each figure is the median over all timed calls. Two
clocks: wall time (``perf_counter``, torch's default threads), and CPU time of the calling
thread (``thread_time``) with torch limited to one thread, so that all work is on that thread.
CPU time is what the call costs on an idle core; unlike wall time it is not inflated when other
processes preempt this one (the load average is printed next to the figures).

- baseline ``masked sum``: ``(entropies * mask).sum().item()``, the cheapest thing any
  monitoring could do (one masked reduction and one host sync);
- baseline ``naive per-class``: what one would write by hand: boolean-mask each class x outcome
  cell and call ``.item()`` per sum (the four entropy-and-NLL cells, no outcome "unknown");
- ``StepStats.from_batch`` with entropies only, and with log-probs + rewards + phrases (the
  full hook workload), plus ``to_record`` (done once per step, not per micro-batch).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from phasewatch.stats import StepStats

TARGET_S = 1e-3
PHRASES = ("wait", "but", "let me check", "alternatively", "we can use the fact that", "hmm,")


def make_inputs(B: int, T: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    completion = (torch.arange(T)[None, :] < lengths[:, None]).long()  # TRL's int mask
    entropies = torch.rand(B, T, generator=g) * 2.0
    planning = torch.rand(B, T, generator=g) < 0.1
    logps = -torch.rand(B, T, generator=g) * 3.0
    rewards = (torch.rand(B, generator=g) > 0.5).float()
    # ~8 matched phrases per rollout, each listed once per occurrence, as the labeler gives them
    phrases = [[PHRASES[(b * 7 + i) % len(PHRASES)] for i in range(8)] for b in range(B)]
    return dict(entropies=entropies, completion_mask=completion, planning_mask=planning,
                logps=logps, rewards=rewards, phrases=phrases)


def naive_per_class(x: dict) -> list[float]:
    h, lp, r = x["entropies"], x["logps"], x["rewards"]
    comp = x["completion_mask"].bool()
    out = []
    for cls_mask in (x["planning_mask"], ~x["planning_mask"]):
        for row_mask in (r > 0, r <= 0):
            cell = comp & cls_mask & row_mask[:, None]
            n = cell.sum().item()
            out += [n, h[cell].sum().item(), (h[cell] ** 2).sum().item(), (-lp[cell]).sum().item()]
    return out


def time_calls(fn, calls: int, clock=time.perf_counter) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


def measure(candidates: dict, rounds: int, calls: int, clock) -> dict[str, float]:
    for fn in candidates.values():  # warm-up
        time_calls(fn, 5, clock)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name] += time_calls(fn, calls, clock)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=40, help="timed calls per candidate per round")
    args = ap.parse_args()

    x = make_inputs(args.batch, args.tokens)
    h, m = x["entropies"], x["completion_mask"]
    stats = StepStats.from_batch(**x)
    candidates = {
        "baseline: masked sum": lambda: (h * m).sum().item(),
        "baseline: naive per-class": lambda: naive_per_class(x),
        "from_batch (entropies only)": lambda: StepStats.from_batch(h, m, x["planning_mask"]),
        "from_batch (+logps, rewards, phrases)": lambda: StepStats.from_batch(**x),
        "to_record (once per step)": lambda: stats.to_record(1),
    }
    threads = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    wall = measure(candidates, args.rounds, args.calls, time.perf_counter)
    torch.set_num_threads(1)
    cpu = measure(candidates, args.rounds, args.calls, time.thread_time)
    torch.set_num_threads(threads)
    load_after = os.getloadavg()[0]

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__};"
          f" micro-batch ({args.batch}, {args.tokens}); median of {args.rounds * args.calls} calls"
          f" each; load average {load_before:.1f} -> {load_after:.1f}")
    print(f"  {'':40s} {'wall (' + str(threads) + ' thr)':>14s} {'CPU (1 thr)':>12s}"
          f" {'CPU / masked sum':>17s} {'CPU / naive':>12s}")
    for name in candidates:
        print(f"  {name:40s} {wall[name] * 1e6:11.1f} us {cpu[name] * 1e6:9.1f} us"
              f" {cpu[name] / cpu['baseline: masked sum']:16.1f}x"
              f" {cpu[name] / cpu['baseline: naive per-class']:11.2f}x")
    full = "from_batch (+logps, rewards, phrases)"
    per_step_cpu = cpu[full] + cpu["to_record (once per step)"]
    for clock_name, table in (("wall", wall), ("CPU", cpu)):
        value = table[full]
        verdict = "MET" if value < TARGET_S else "NOT MET"
        print(f"target: from_batch of a ({args.batch}, {args.tokens}) micro-batch under"
              f" {TARGET_S * 1e3:.0f} ms on CPU, {clock_name} time: {verdict}"
              f" ({value * 1e3:.3f} ms = {value / TARGET_S:.2f} x target;"
              f" {value / table['baseline: naive per-class']:.2f} x the naive per-class version,"
              f" {value / table['baseline: masked sum']:.1f} x one masked sum)")
    print(f"per optimizer step with to_record: {per_step_cpu * 1e3:.3f} ms CPU")


if __name__ == "__main__":
    main()
