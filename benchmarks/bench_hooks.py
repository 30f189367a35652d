"""What phasewatch's TRL hook adds to a GRPO step, measured against plain GRPOTrainer.

Usage::

    python benchmarks/bench_hooks.py                 # both sizes
    python benchmarks/bench_hooks.py --sizes tiny --rounds 3

For each size, a plain ``trl.GRPOTrainer`` and a ``PhaseWatchGRPOTrainer`` (``reweight="auto"``,
in-process monitor) are built from the same seed and trained side by side, taking turns step
by step (a callback hands the turn over at each optimizer-step boundary): plain step 1,
watched step 1, plain step 2, ... So both see the same machine load, which matters on a shared
machine. With ``auto`` and no phase shift both generate the same completions, so step ``k`` of
one does the same work as step ``k`` of the other. Each run's first step is a warm-up and is left out.

Step time is measured per optimizer step (from ``on_step_begin`` to ``on_step_end``: generation,
loss, backward, optimizer), as CPU time of the training thread with torch on one thread (so the
figure does not move when other processes load the machine) and as wall time. Printed: the
ratio of the median CPU step times (watched / plain) against its target, the same for wall
time, and the time spent in each phasewatch stage per step (labeling, statistics, end of step =
reduce + hand-off to the monitor, reweighting, and the wait for the monitor's decision at the
start of the next step), timed inside the watched runs. The in-process monitor itself runs on
its own thread, so only what it costs the training thread shows in the step times.

Sizes: ``tiny`` = 8 completions x 24 tokens (the test setup); ``large`` = 64 completions x 256
tokens (generation forced to the full length). Targets: 1.03 (tiny), 1.05 (large).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "wait, but let's check the sum again. alternatively we can try another approach.",
    "first compute 3 + 4 = 7. then multiply by 2 to get 14. so the answer is 14.",
    "hmm, maybe we should try a different approach. now we can see that x = 5.",
    "therefore the result is 12. however, perhaps we made an error. okay so 6 * 2 = 12.",
    "next we add 5 and 8 to get 13. thus the total is 13. alright, since 13 is odd we stop.",
]
PROMPTS = ["compute 3 + 4", "what is 2 * 5", "solve x + 1 = 6", "find the sum of 5 and 8"]

SIZES = {
    # name: (completions per step, completion tokens, generations per prompt, target ratio)
    "tiny": (8, 24, 4, 1.03),
    "large": (64, 256, 8, 1.05),
}
STAGES = ("sync_decision", "label", "observe", "end_step", "reweight")
MONITOR_THREAD = "monitor (own thread)"


def reward(completions, **_):
    return [len(set(c.split())) / 10.0 for c in completions]


def build(cls, out: Path, tokenizer, size: str, steps: int, **extra):
    from datasets import Dataset
    from trl import GRPOConfig

    from phasewatch.tiny import tiny_causal_lm

    batch, length, group, _ = SIZES[size]
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, report_to=[], per_device_train_batch_size=batch,
        num_generations=group, max_completion_length=length, max_steps=steps, logging_steps=1,
        learning_rate=1e-3, save_strategy="no", seed=0, bf16=False, disable_tqdm=True,
        generation_kwargs={"min_new_tokens": length} if size == "large" else None,
    )
    model = tiny_causal_lm(len(tokenizer), hidden_size=32, seed=0)
    dataset = Dataset.from_dict({"prompt": [PROMPTS[i % 4] for i in range(batch * steps)]})
    return cls(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
               processing_class=tokenizer, **extra)


def timed_stages(trainer, totals: dict[str, list[float]]) -> None:
    """Wrap the watcher's stages, and the monitor's work on its own thread, with timers (the
    benchmark's own instrumentation): ``totals[name] = [wall_s, cpu_s]``. Time spent during
    the first (warm-up) optimizer step is not counted."""
    watch = trainer.phasewatch

    def wrap(owner, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                if trainer.state.global_step > 0:
                    entry = totals.setdefault(name, [0.0, 0.0])
                    entry[0] += time.perf_counter() - wall
                    entry[1] += time.thread_time() - cpu

        setattr(owner, attr, timed)

    for name in STAGES:
        wrap(watch, name, name)
    transport = getattr(watch.client, "transport", None)
    if transport is not None and hasattr(transport, "monitor"):
        wrap(transport, "send", MONITOR_THREAD)


class TakeTurns:
    """Lets several trainers, each training on its own thread, run one optimizer step at a time
    in a fixed rotation (a ``TrainerCallback`` factory)."""

    def __init__(self, count: int, timeout_s: float = 1800.0) -> None:
        import threading

        self.cond = threading.Condition()
        self.turn = 0
        self.active = list(range(count))
        self.timeout_s = timeout_s

    def callback(self, index: int, clock: list):
        """Waits for this trainer's turn, times its optimizer step (wall and CPU time of the
        training thread), then hands the turn on. ``clock`` receives ``(wall_s, cpu_s)``."""
        from transformers import TrainerCallback

        turns = self

        class TurnAndClock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                with turns.cond:
                    if not turns.cond.wait_for(lambda: turns.turn == index, timeout=turns.timeout_s):
                        raise RuntimeError("benchmark: the other trainer stopped taking turns")
                self.start = (time.perf_counter(), time.thread_time())

            def on_step_end(self, args, state, control, **kwargs):
                clock.append((time.perf_counter() - self.start[0], time.thread_time() - self.start[1]))
                turns.done_step(index)

        return TurnAndClock()

    def done_step(self, index: int) -> None:
        with self.cond:
            position = self.active.index(index)
            self.turn = self.active[(position + 1) % len(self.active)]
            self.cond.notify_all()

    def leave(self, index: int) -> None:
        with self.cond:
            if index in self.active:
                if self.turn == index and len(self.active) > 1:
                    self.turn = self.active[(self.active.index(index) + 1) % len(self.active)]
                self.active.remove(index)
                self.cond.notify_all()


def train_in_turns(trainers: list) -> list[list[tuple[float, float]]]:
    """Train side by side, one optimizer step at a time; per trainer, its steps' (wall, cpu)."""
    import threading

    turns = TakeTurns(len(trainers))
    clocks: list[list[tuple[float, float]]] = [[] for _ in trainers]
    errors: list[BaseException] = []

    def run(index: int, trainer) -> None:
        try:
            trainer.train()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
        finally:
            turns.leave(index)

    for i, trainer in enumerate(trainers):
        trainer.add_callback(turns.callback(i, clocks[i]))
    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(trainers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return clocks


def bench(size: str, rounds: int, steps: int, tokenizer) -> dict:
    import phasewatch
    from phasewatch.hooks.trl import PhaseWatchGRPOTrainer
    from trl import GRPOTrainer

    plain_runs: list[list[tuple[float, float]]] = []
    watched_runs: list[list[tuple[float, float]]] = []
    stage_totals: dict[str, list[float]] = {}
    lengths: list[float] = []
    with TemporaryDirectory() as tmp:
        for r in range(rounds):
            plain = build(GRPOTrainer, Path(tmp) / f"p{r}", tokenizer, size, steps)
            watched = build(PhaseWatchGRPOTrainer, Path(tmp) / f"w{r}", tokenizer, size, steps,
                            phasewatch=phasewatch.Config(run=f"bench-{size}-{r}", reweight="auto"))
            timed_stages(watched, stage_totals)
            order = [plain, watched] if r % 2 == 0 else [watched, plain]
            clocks = dict(zip(map(id, order), train_in_turns(order)))
            plain_runs.append(clocks[id(plain)][1:])  # the first step of each run is a warm-up
            watched_runs.append(clocks[id(watched)][1:])
            lengths += [h["completions/mean_length"] for h in watched.state.log_history if "completions/mean_length" in h]
            assert watched.phasewatch.errors == 0, watched.phasewatch.failures.counts
            watched.phasewatch.close()
            print(f"  {size} round {r + 1}/{rounds}: median cpu s/step plain "
                  f"{statistics.median(c for _, c in plain_runs[-1]):.4f}, watched "
                  f"{statistics.median(c for _, c in watched_runs[-1]):.4f}", flush=True)

    def summary(which: int) -> dict:
        plain_all = [step[which] for run in plain_runs for step in run]
        watched_all = [step[which] for run in watched_runs for step in run]
        paired = [w[which] / p[which] for pr, wr in zip(plain_runs, watched_runs) for p, w in zip(pr, wr)]
        return {
            "plain": statistics.median(plain_all),
            "watched": statistics.median(watched_all),
            "ratio": statistics.median(watched_all) / statistics.median(plain_all),
            "paired": statistics.median(paired),
        }

    timed_steps = sum(len(run) for run in watched_runs)
    return {
        "size": size,
        "wall": summary(0),
        "cpu": summary(1),
        "stage_ms": {k: (1000 * v[0] / timed_steps, 1000 * v[1] / timed_steps) for k, v in stage_totals.items()},
        "mean_length": statistics.mean(lengths) if lengths else float("nan"),
        "steps": timed_steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["tiny", "large"])
    parser.add_argument("--rounds", type=int, default=None, help="plain/watched pairs (default 6 tiny, 3 large)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 6 tiny, 4 large)")
    args = parser.parse_args(argv)

    import torch

    from phasewatch.tiny import train_tokenizer

    # One torch thread: every step's work runs on the training thread, so its CPU time
    # (time.thread_time) measures the work itself, whatever else the machine is doing.
    torch.set_num_threads(1)
    tokenizer = train_tokenizer(CORPUS * 20, vocab_size=300, kind="metaspace")
    results = []
    for size in args.sizes:
        rounds = args.rounds or (6 if size == "tiny" else 3)
        steps = args.steps or (8 if size == "tiny" else 4)
        results.append(bench(size, rounds, steps, tokenizer))

    print(f"\nmachine: {os.cpu_count()} CPU cores (x86-64, shared), torch {torch.__version__} with 1 thread, no GPU")
    worst = 0.0
    for res in results:
        batch, length, _, target = SIZES[res["size"]]
        cpu, wall = res["cpu"], res["wall"]
        worst = max(worst, cpu["ratio"] / target)
        print(f"\n{res['size']}: {batch} completions x {length} tokens (mean length {res['mean_length']:.0f}), "
              f"{res['steps']} timed optimizer steps per trainer")
        print(f"  CPU time per step:  plain {cpu['plain']:.4f} s, PhaseWatchGRPOTrainer {cpu['watched']:.4f} s"
              f" -> ratio {cpu['ratio']:.3f} (target <= {target:.2f}: {'met' if cpu['ratio'] <= target else 'NOT met'});"
              f" median paired ratio {cpu['paired']:.3f}")
        print(f"  wall time per step: plain {wall['plain']:.4f} s, PhaseWatchGRPOTrainer {wall['watched']:.4f} s"
              f" -> ratio {wall['ratio']:.3f}; median paired ratio {wall['paired']:.3f}")
        step_ms = 1000 * cpu["plain"]
        stages = res["stage_ms"]
        on_thread = sum(cpu_ms for name, (_, cpu_ms) in stages.items() if name != MONITOR_THREAD)
        print(f"  phasewatch on the training thread, per step: {on_thread:.2f} ms CPU = {100 * on_thread / step_ms:.2f}%"
              " of a plain step (wall ms in brackets)")
        for name in (*STAGES, MONITOR_THREAD):
            wall_ms, cpu_ms = stages.get(name, (0.0, 0.0))
            print(f"    {name:<21} {cpu_ms:7.2f} ms CPU ({100 * cpu_ms / step_ms:5.2f}%)  [{wall_ms:7.2f} ms wall]")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
