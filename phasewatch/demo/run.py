"""``phasewatch demo``: a real GRPO run on a laptop CPU with all of phasewatch attached.

What :func:`run_demo` does, in order:

1. writes a warm-up corpus, trains a byte-level BPE tokenizer on it and fits a ~105k-parameter
   causal LM to it (:mod:`phasewatch.demo.warmup`);
2. trains that model with TRL's GRPO on the verifiable task of :mod:`phasewatch.demo.task`,
   through :class:`~phasewatch.hooks.trl.PhaseWatchGRPOTrainer` with an in-process
   :class:`~phasewatch.monitor.Monitor`, a SQLite store in the output folder, a Prometheus
   ``/metrics`` endpoint on a free 127.0.0.1 port, and ``reweight="auto"`` (HICRA switched on
   once the monitor confirms the execution-to-planning shift);
3. prints one line per step and a progress bar, then a summary, and writes ``report.png``,
   ``report.html`` and ``report.json`` (:mod:`phasewatch.demo.report`).

Nothing is downloaded and nothing needs a GPU.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from phasewatch.demo.corpus import KINDS, PLANS, SOLVING_PLAN, WarmupCorpus
from phasewatch.demo.task import DEFAULT_MIX, DemoReward, StepOutcomes
from phasewatch.demo.warmup import WarmupSettings
from phasewatch.events import PHASE_NAMES

#: File names inside the output folder.
STORE_NAME = "phasewatch.db"
#: Completions with their rewards, for ``phasewatch grams mine DIR/rollouts.jsonl``.
ROLLOUTS_NAME = "rollouts.jsonl"
MARKER_NAME = ".phasewatch-demo"
RUN_ID = "demo"


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo run depends on; the defaults are the ones measured in the README.

    steps: GRPO optimizer steps. out: output folder. seed: seeds the corpus, the model, the
    prompts and TRL's sampling. prompts_per_step / generations: GRPO batch (prompts, and
    completions sampled per prompt). learning_rate: GRPO's AdamW rate. penalty: reward of a
    completion with a false equation (see :mod:`phasewatch.demo.task`). threads: torch CPU
    threads (the model is tiny: one thread is fastest, and leaves a core for the monitor).
    """

    steps: int = 500
    out: Path = Path("phasewatch-demo")
    seed: int = 0
    corpus: WarmupCorpus = field(default_factory=WarmupCorpus)
    warmup: WarmupSettings = field(default_factory=WarmupSettings)
    mix: tuple[tuple[str, int], ...] = tuple(DEFAULT_MIX.items())
    prompts_per_step: int = 12
    generations: int = 8
    learning_rate: float = 5e-4
    penalty: float = 1.0
    max_completion_length: int = 32
    threads: int = 1
    run: str = RUN_ID

    def __post_init__(self) -> None:
        if int(self.steps) < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps!r}")
        if int(self.generations) < 2:
            raise ValueError(f"generations: GRPO needs >= 2 completions per prompt, got {self.generations!r}")
        if int(self.prompts_per_step) < 1:
            raise ValueError(f"prompts_per_step: must be >= 1, got {self.prompts_per_step!r}")
        if int(self.threads) < 1:
            raise ValueError(f"threads: must be >= 1, got {self.threads!r}")
        if not float(self.learning_rate) > 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate!r}")


@dataclass
class DemoResult:
    """What a finished demo produced. ``report`` holds the summary written to report.json."""

    out: Path
    store: Path
    report_png: Path
    report_html: Path
    report_json: Path
    report: dict[str, Any]
    metrics_url: str | None
    interrupted: bool = False


# ------------------------------------------------------------------------------------------
# console output
# ------------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str = ".3f", missing: str = "  -  ") -> str:
    return missing if value is None else format(value, spec)


STEP_HEADER = (
    f"{'step':>5}  {'phase':<9}  {'H exec':>6}  {'H plan':>6}  {'sem H':>5}  {'alpha':>5}  "
    f"{'reward':>6}  {'solved':>6}"
)


def step_line(step: int, logs: dict[str, float], outcomes: StepOutcomes | None) -> str:
    """One line of the per-step table: phase in force, per-class entropy (nats), semantic
    entropy, HICRA alpha applied, mean reward and share of completions solved."""
    phase = PHASE_NAMES.get(int(logs.get("phasewatch/phase", -1)), "?")
    solved = None if outcomes is None else outcomes.accuracy()
    return (
        f"{step:>5}  {phase:<9}  {_fmt(logs.get('phasewatch/entropy/execution')):>6}  "
        f"{_fmt(logs.get('phasewatch/entropy/planning')):>6}  {_fmt(logs.get('phasewatch/semantic_entropy'), '.2f'):>5}  "
        f"{_fmt(logs.get('phasewatch/alpha'), '.2f'):>5}  {_fmt(logs.get('reward'), '.2f'):>6}  "
        f"{_fmt(None if solved is None else 100 * solved, '5.0f'):>5}%"
    )


class _Console:
    """Lines above a progress bar: ``tqdm.write`` keeps the bar at the bottom; without a bar
    (not a terminal, or ``progress=False``) lines go straight to the stream."""

    def __init__(self, stream: TextIO, progress: bool | None) -> None:
        self.stream = stream
        self.progress = progress
        self.bar: Any = None
        self._lock = threading.Lock()

    def open_bar(self, total: int, desc: str) -> None:
        from tqdm import tqdm

        disable = None if self.progress is None else not self.progress
        self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=disable, leave=False, dynamic_ncols=True)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, text: str) -> None:
        with self._lock:
            if self.bar is not None and not self.bar.disable:
                self.bar.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)


def _event_line(event: Any) -> str:
    return (
        f"  >> event {event.kind} on {event.series}: detected at step {event.step}, onset ~{event.onset}"
        f" ({event.detector}: {event.statistic:.3g} vs threshold {event.threshold:.3g})"
    )


# ------------------------------------------------------------------------------------------
# output folder
# ------------------------------------------------------------------------------------------
def prepare_out(out: Path) -> Path:
    """Create ``out``; a previous demo's files there are replaced, anything else named like
    them is refused (the demo never deletes a file it did not write)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    store = out / STORE_NAME
    marker = out / MARKER_NAME
    if store.exists() and not marker.exists():
        raise ValueError(f"--out {out}: {store} exists and was not written by phasewatch demo; choose another folder")
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out}: folder is not writable")
    for name in (STORE_NAME, STORE_NAME + "-wal", STORE_NAME + "-shm", "report.png", "report.html", "report.json",
                 ROLLOUTS_NAME):
        path = out / name
        if path.exists() and marker.exists():
            path.unlink()
    marker.write_text("written by `phasewatch demo`; files here are replaced by the next demo run\n", encoding="utf-8")
    return store


# ------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------
def _quiet_libraries() -> None:
    """The demo prints its own progress; silence library chatter that would interleave."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", module=r"(transformers|trl|accelerate|torch)\b")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def _grpo_args(config: DemoConfig, scratch: str) -> Any:
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=scratch,  # nothing is saved (save_strategy="no"); TRL still wants a folder
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to=[],
        gradient_checkpointing=False,
        per_device_train_batch_size=config.prompts_per_step * config.generations,
        num_generations=config.generations,
        max_completion_length=config.max_completion_length,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        max_steps=config.steps,
        logging_steps=1,
        save_strategy="no",
        seed=config.seed,
        disable_tqdm=True,
        shuffle_dataset=False,  # the prompts come in blocks that follow the mix exactly
        dataloader_num_workers=0,
    )


def _make_callback(console: _Console, reward: DemoReward, logs_by_step: dict[int, dict[str, float]]) -> Any:
    from transformers import TrainerCallback

    class DemoProgress(TrainerCallback):
        """Prints the per-step line from TRL's own log of the step (main thread, in order)."""

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not logs or "phasewatch/phase" not in logs:
                return
            step = int(state.global_step)
            logs_by_step[step] = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            if step == 1 or step % 25 == 0:
                console.line(STEP_HEADER)
            console.line(step_line(step, logs, reward.latest))

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if console.bar is not None:
                console.bar.update(1)

    return DemoProgress()


def run_demo(config: DemoConfig | None = None, *, stream: TextIO | None = None, progress: bool | None = None) -> DemoResult:
    """Run the whole demo (see the module docstring) and return where everything went.

    progress: ``None`` shows progress bars on a terminal only; ``True``/``False`` forces them.
    A Ctrl-C during GRPO stops training, and the report is still written for the steps done.
    """
    config = config or DemoConfig()
    stream = stream or sys.stdout
    console = _Console(stream, progress)
    out = Path(config.out)
    store_path = prepare_out(out)
    _quiet_libraries()

    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(config.threads))
    try:
        return _run(config, console, out, store_path)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config: DemoConfig, console: _Console, out: Path, store_path: Path) -> DemoResult:
    started = time.perf_counter()
    console.line(f"phasewatch demo: GRPO on a tiny model, {config.steps} steps, seed {config.seed}, output in {out}/")
    tokenizer, model, warmup_s = _warm_up(config, console)
    grpo = _train_with_phasewatch(config, console, tokenizer, model, store_path)

    from phasewatch.demo.report import write_report

    console.line("[3/3] report")
    timing = {"warmup_s": warmup_s, "grpo_s": grpo.seconds, "total_s": time.perf_counter() - started}
    n_params = sum(p.numel() for p in model.parameters())
    report = write_report(
        store_path,
        config.run,
        out,
        logs_by_step=grpo.logs_by_step,
        outcomes=grpo.reward,
        settings=_settings(config, n_params, len(tokenizer)),
        timing=timing,
    )
    for text in summary_lines(report, out):
        console.line(text)
    return DemoResult(
        out=out,
        store=store_path,
        report_png=out / "report.png",
        report_html=out / "report.html",
        report_json=out / "report.json",
        report=report,
        metrics_url=grpo.metrics_url,
        interrupted=grpo.interrupted,
    )


def _warm_up(config: DemoConfig, console: _Console) -> tuple[Any, Any, float]:
    """[1/3]: tokenizer, tiny model, supervised warm-up. Returns (tokenizer, model, seconds)."""
    from phasewatch.demo.warmup import build_model, build_tokenizer, supervised_warmup

    seed = int(config.seed)
    tokenizer = build_tokenizer(config.corpus, config.warmup, random.Random(seed))
    model = build_model(tokenizer, config.warmup, seed)
    n_params = sum(p.numel() for p in model.parameters())
    console.line(
        f"[1/3] warm-up: {n_params:,}-parameter causal LM, {len(tokenizer)}-token BPE vocabulary;"
        f" {config.warmup.steps} supervised steps on traces with a narrow planning habit"
        f" ({config.corpus.habit:.0%} '{PLANS['try']}') and sloppy arithmetic"
    )
    t0 = time.perf_counter()
    console.open_bar(config.warmup.steps, "warm-up")

    def on_step(step: int, loss: float) -> None:
        if console.bar is not None:
            console.bar.update(1)
            if step % 50 == 0:
                console.bar.set_postfix(loss=f"{loss:.3f}")

    losses = supervised_warmup(model, tokenizer, config.corpus, config.warmup, random.Random(seed + 1), on_step=on_step)
    console.close_bar()
    seconds = time.perf_counter() - t0
    if losses:
        tail = losses[-50:]
        console.line(f"      done in {seconds:.0f} s, final loss {sum(tail) / len(tail):.3f} nats/token")
    return tokenizer, model, seconds


@dataclass
class _GRPOOutcome:
    reward: DemoReward
    logs_by_step: dict[int, dict[str, float]]
    metrics_url: str | None
    interrupted: bool
    seconds: float


def _train_with_phasewatch(config: DemoConfig, console: _Console, tokenizer: Any, model: Any, store_path: Path) -> _GRPOOutcome:
    """[2/3]: TRL GRPO through PhaseWatchGRPOTrainer, with an in-process monitor writing
    ``store_path``, a Prometheus endpoint and reweight="auto"."""
    from datasets import Dataset

    from phasewatch.config import Config
    from phasewatch.demo.task import prompt_rows
    from phasewatch.exporter import PrometheusExporter
    from phasewatch.hooks.trl import PhaseWatchGRPOTrainer
    from phasewatch.monitor import Monitor

    say = console.line
    mix = dict(config.mix)
    rows = prompt_rows(config.steps + 1, config.prompts_per_step, int(config.seed) + 2, mix, config.corpus.max_number)
    dataset = Dataset.from_dict({"prompt": rows})
    outcome = _GRPOOutcome(DemoReward(config.penalty), {}, None, False, 0.0)
    monitor = Monitor(store_path)
    exporter = PrometheusExporter()
    monitor.add_listener(exporter)
    server = None
    try:
        server = exporter.serve(port=0, announce=False)
        outcome.metrics_url = server.url
    except OSError as exc:  # the demo runs on without Prometheus rather than fail
        say(f"      (Prometheus endpoint not started: {exc})")

    def announce_events(observation: Any) -> None:  # runs on the monitor's listener thread
        for event in observation.decision.events:
            say(_event_line(event))

    monitor.add_listener(announce_events)
    try:
        say(
            f"[2/3] GRPO: {config.prompts_per_step} problems x {config.generations} completions per step"
            f" (mix {', '.join(f'{k} {v}' for k, v in mix.items())}); phasewatch attached with reweight='auto'"
        )
        if outcome.metrics_url:
            say(f"      Prometheus metrics while it runs: {outcome.metrics_url}")
        say(f"      store: {store_path}")
        scratch = tempfile.TemporaryDirectory(prefix="phasewatch-demo-")
        trainer = PhaseWatchGRPOTrainer(
            model=model,
            reward_funcs=[outcome.reward],
            args=_grpo_args(config, scratch.name),
            train_dataset=dataset,
            processing_class=tokenizer,
            phasewatch=Config(
                run=config.run, monitor=monitor, reweight="auto", save_rollouts=store_path.parent / ROLLOUTS_NAME
            ),
        )
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_make_callback(console, outcome.reward, outcome.logs_by_step))
        console.open_bar(config.steps, "GRPO")
        t0 = time.perf_counter()
        try:
            trainer.train()
        except KeyboardInterrupt:
            outcome.interrupted = True
            say("interrupted: stopping training and writing the report for the steps done")
        finally:
            outcome.seconds = time.perf_counter() - t0
            console.close_bar()
            trainer.phasewatch.close()
            scratch.cleanup()
    finally:
        monitor.flush(30.0)
        monitor.close()
        if server is not None:
            server.close()
    return outcome


def _settings(config: DemoConfig, n_params: int, vocab: int) -> dict[str, Any]:
    return {
        "seed": config.seed,
        "steps": config.steps,
        "prompts_per_step": config.prompts_per_step,
        "generations": config.generations,
        "learning_rate": config.learning_rate,
        "penalty": config.penalty,
        "mix": dict(config.mix),
        "model_parameters": n_params,
        "vocab_size": vocab,
        "warmup_steps": config.warmup.steps,
        "habit": config.corpus.habit,
        "arithmetic_noise": config.corpus.arithmetic_noise,
        "copy_noise": config.corpus.copy_noise,
        "threads": config.threads,
    }


def summary_lines(report: dict[str, Any], out: Path) -> list[str]:
    """The closing summary printed after the run (also the basis of the HTML report's text)."""
    lines = [""]
    s = report["series"]
    lines.append(f"summary ({report['steps']} steps, {report['timing']['total_s']:.0f} s in all,"
                 f" {report['timing']['grpo_s'] / max(1, report['steps']):.2f} s per GRPO step)")
    for label, key, spec in (
        ("execution-token entropy", "entropy/execution", ".3f"),
        ("planning-token entropy", "entropy/planning", ".3f"),
        ("semantic entropy", "semantic_entropy", ".2f"),
        ("planning fraction", "planning_frac", ".3f"),
        ("reward", "reward", ".2f"),
    ):
        first, last = s.get(key, {}).get("first"), s.get(key, {}).get("last")
        lines.append(f"  {label:<24} {_fmt(first, spec)} -> {_fmt(last, spec)}   (mean of the first / last 20 steps)")
    shift = report["phase_shift"]
    if shift is None:
        lines.append(f"  phase shift: none detected; the run ended in phase '{report['phase']}'.")
        lines.append("  " + report["verdict"])
    else:
        lines.append(
            f"  phase shift: detected at step {shift['step']} (onset ~{shift['onset']}, on {shift['series']});"
            f" HICRA reweighting applied from step {_fmt(report['reweighting_from_step'], 'd', 'none')}"
        )
        lines.append("  " + report["verdict"])
    others = [e for e in report["events"] if e["kind"] != "phase_shift"]
    if others:
        lines.append("  other events: " + "; ".join(f"{e['kind']} on {e['series']} at step {e['step']}" for e in others))
    lines.append("  plans used (first 50 -> last 50 steps, share of completions; solved share):")
    for kind in KINDS:
        first = report["plans"]["first"].get(kind, {})
        last = report["plans"]["last"].get(kind, {})
        best = SOLVING_PLAN[kind]
        lines.append(
            f"    {kind:<8} '{PLANS[best]}' {_fmt(first.get('plans', {}).get(best), '.0%')} -> "
            f"{_fmt(last.get('plans', {}).get(best), '.0%')};  solved {_fmt(first.get('solved'), '.0%')} -> "
            f"{_fmt(last.get('solved'), '.0%')}"
        )
    lines.append(f"  report: {out / 'report.png'}  {out / 'report.html'}  {out / 'report.json'}")
    lines.append(f"  replay the store: phasewatch replay {out / STORE_NAME}")
    lines.append(
        f"  mine strategic grams from its rollouts: phasewatch grams mine {out / ROLLOUTS_NAME}"
        " (the default embedder needs phasewatch[grams]; --embedder hashing needs nothing)"
    )
    return lines
