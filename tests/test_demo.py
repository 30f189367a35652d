"""``phasewatch demo``: the task and corpus pieces, and a real (short) demo run end to end.

The end-to-end test runs the real thing at a small size: a tokenizer trained here, a tiny
Qwen2 model, the supervised warm-up, TRL's GRPOTrainer through PhaseWatchGRPOTrainer, the
in-process monitor with its SQLite store, and the Prometheus endpoint scraped over real HTTP
while training runs. It then checks that the report and the store agree and that
``phasewatch replay`` on the store finds the same events.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
import urllib.request
from pathlib import Path

import pytest

from phasewatch.demo.corpus import (
    KINDS,
    PLANS,
    SOLVING_PLAN,
    Problem,
    WarmupCorpus,
    draw_problem,
    parse_prompt,
    plan_of,
    write_completion,
)
from phasewatch.demo.task import DemoReward, equations_hold, prompt_rows, reference_completion, score

STEP_LINE = re.compile(r"^\s*(\d+)\s+(warmup|execution|planning)\s")


# ------------------------------------------------------------------------------------------
# corpus and task
# ------------------------------------------------------------------------------------------
def test_plan_phrases_are_planning_tokens_for_the_default_labeler():
    # The demo's whole signal rests on these phrases being labeled planning, and the work
    # after them execution; a lexicon change that drops one would silently flatten the demo.
    from phasewatch.labels import PlanningLabeler

    labeler = PlanningLabeler()
    rng = random.Random(3)
    for kind in KINDS:
        problem = draw_problem(rng, kind)
        text = reference_completion(problem)
        spans = labeler.find(text)
        assert [s.phrase for s in spans] == [PLANS[SOLVING_PLAN[kind]]], text
        assert text[spans[0].end :].strip().startswith(tuple("0123456789")), text


def test_prompts_round_trip_and_bad_prompts_name_themselves():
    rng = random.Random(0)
    for kind in KINDS:
        for _ in range(50):
            problem = draw_problem(rng, kind, max_number=5)
            assert parse_prompt(problem.prompt) == problem
            assert problem.answer >= 0
    with pytest.raises(ValueError, match=r"'Q: 3\*4=\? A:'"):
        parse_prompt("Q: 3*4=? A:")
    with pytest.raises(ValueError, match="kind"):
        draw_problem(rng, "division")


def test_the_verifier_rewards_the_solving_plan_and_penalises_false_work():
    chain = Problem("chain", (3, 5, 2))
    assert score(chain.prompt, " let's break this down 3+5=8 , 8+2=10 . answer 10") == 1.0
    # the habit: honest but wrong plan for the problem
    assert score(chain.prompt, " let me try 3+5=8 . answer 8") == 0.0
    # right plan, a slip in the arithmetic
    assert score(chain.prompt, " let's break this down 3+5=9 , 9+2=11 . answer 11", penalty=0.5) == -0.5
    # right work, answer copied wrong: not solved, not penalised
    assert score(chain.prompt, " let's break this down 3+5=8 , 8+2=10 . answer 8") == 0.0
    # malformed
    assert score(chain.prompt, " 10", penalty=2.0) == -2.0
    missing = Problem("missing", (2, 4, 9))
    assert missing.answer == 3
    assert score(missing.prompt, " we can think of this as 9-2=7 , 7-4=3 . answer 3") == 1.0
    assert equations_hold("9-2=7 , 7-4=3") and not equations_hold("9-2=6") and not equations_hold("9-2")


def test_noiseless_traces_are_true_and_noisy_ones_are_not_always():
    rng = random.Random(1)
    for kind in KINDS:
        problem = draw_problem(rng, kind)
        clean = write_completion(problem, SOLVING_PLAN[kind])
        assert clean == reference_completion(problem)
        assert plan_of(clean) == SOLVING_PLAN[kind]
    corpus = WarmupCorpus(habit=0.8, arithmetic_noise=0.3, copy_noise=0.6)
    rewards = [score(p, c) for p, c in (corpus.example(rng) for _ in range(600))]
    # sloppy traces: some solved, some honest failures, some with false equations
    assert {1.0, 0.0, -1.0} <= set(rewards)
    habit_share = sum(plan_of(c) == "try" for _, c in (corpus.example(rng) for _ in range(600))) / 600
    # "try" is the habit on every kind (80%) and the solving plan of pair problems
    assert 0.8 < habit_share < 0.92
    with pytest.raises(ValueError, match="habit"):
        WarmupCorpus(habit=1.5)


def test_prompt_blocks_follow_the_mix_exactly():
    rows = prompt_rows(steps=5, prompts_per_step=12, seed=0, mix={"pair": 4, "chain": 1, "missing": 1})
    assert len(rows) == 60
    for step in range(5):
        kinds = [parse_prompt(p).kind for p in rows[step * 12 : (step + 1) * 12]]
        assert kinds.count("pair") == 8 and kinds.count("chain") == 2 and kinds.count("missing") == 2
    with pytest.raises(ValueError, match="multiple"):
        prompt_rows(steps=1, prompts_per_step=7, seed=0)


def test_the_reward_function_counts_plans_per_kind():
    reward = DemoReward(penalty=1.0)
    chain, pair = Problem("chain", (1, 2, 3)), Problem("pair", (4, 2), "-")
    out = reward(
        [chain.prompt, chain.prompt, pair.prompt],
        [reference_completion(chain), " let me try 1+2=3 . answer 3", reference_completion(pair)],
    )
    assert out == [1.0, 0.0, 1.0]
    assert reward.latest.total["chain"] == 2 and reward.latest.solved["chain"] == 1
    assert reward.latest.plan_share("chain", "decompose") == 0.5
    assert reward.window(5).accuracy() == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------
# a real demo run
# ------------------------------------------------------------------------------------------
class _ScrapingStream(io.StringIO):
    """Captures the demo's output and, once a few step lines went by, scrapes the Prometheus
    endpoint the demo announced (a real HTTP GET against the running exporter)."""

    def __init__(self) -> None:
        super().__init__()
        self.url: str | None = None
        self.scraped: str | None = None

    def write(self, text: str) -> int:
        m = re.search(r"Prometheus metrics while it runs: (\S+)", text)
        if m:
            self.url = m.group(1)
        step = STEP_LINE.match(text)
        if step and int(step.group(1)) >= 5 and self.scraped is None and self.url:
            with urllib.request.urlopen(self.url, timeout=10) as response:
                self.scraped = response.read().decode("utf-8")
        return super().write(text)


SMALL_STEPS = 24


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    from phasewatch.demo.run import DemoConfig, run_demo
    from phasewatch.demo.warmup import WarmupSettings

    out = tmp_path_factory.mktemp("demo") / "out"
    config = DemoConfig(
        steps=SMALL_STEPS,
        out=out,
        seed=0,
        warmup=WarmupSettings(steps=250),
        prompts_per_step=6,
        generations=4,
    )
    stream = _ScrapingStream()
    result = run_demo(config, stream=stream, progress=False)
    return result, stream


def test_demo_writes_report_and_store(small_demo):
    result, stream = small_demo
    assert result.store.exists() and result.store.name == "phasewatch.db"
    assert result.report_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = result.report_html.read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "phasewatch demo" in html
    report = json.loads(result.report_json.read_text(encoding="utf-8"))
    assert report == json.loads(json.dumps(result.report))  # the file is what run_demo returned
    text = stream.getvalue()
    # one line per step, in order, then the summary
    steps = [int(m.group(1)) for m in map(STEP_LINE.match, text.splitlines()) if m]
    assert steps == list(range(1, SMALL_STEPS + 1))
    assert "summary (" in text and "replay the store: phasewatch replay" in text
    # every completion was saved with its reward, for `phasewatch grams mine OUT/rollouts.jsonl`
    from phasewatch.grams.rollouts import read_rollouts

    rollouts = read_rollouts(result.store.parent / "rollouts.jsonl")
    assert len(rollouts) == SMALL_STEPS * 6 * 4 and {r.run for r in rollouts} == {"demo"}
    assert sorted({r.step for r in rollouts}) == list(range(1, SMALL_STEPS + 1))
    assert {r.reward for r in rollouts} <= {1.0, 0.0, -1.0} and len({r.group for r in rollouts}) > 1


def test_report_agrees_with_the_store(small_demo):
    from phasewatch.store import Store

    result, _ = small_demo
    report = result.report
    with Store(result.store, readonly=True) as store:
        assert store.runs() == [report["run"]]
        records = store.records(report["run"])
        events = [e.to_json() for e in store.events(report["run"])]
    assert report["steps"] == len(records) == SMALL_STEPS
    assert (report["first_step"], report["last_step"]) == (records[0].step, records[-1].step) == (1, SMALL_STEPS)
    assert [(e["kind"], e["step"], e["onset"], e["series"]) for e in report["events"]] == [
        (e["kind"], e["step"], e["onset"], e["series"]) for e in events
    ]
    shifts = [e for e in events if e["kind"] == "phase_shift"]
    assert (report["phase_shift"] is None) == (not shifts)
    # HICRA only after a confirmed shift, and then from the step after it
    if shifts:
        assert report["reweighting_from_step"] in (None, shifts[0]["step"] + 1)
    else:
        assert report["reweighting_from_step"] is None
        assert all(alpha == 0.0 for _, alpha in report["alpha"])
    # the per-class series the report summarises are the store's
    first_exec = [r.values["entropy/execution"] for r in records[:20]]
    assert report["series"]["entropy/execution"]["first"] == pytest.approx(sum(first_exec) / len(first_exec))


def test_replaying_the_store_finds_the_same_events(small_demo, capsys):
    from phasewatch.cli import main
    from phasewatch.replay import replay_file

    result, _ = small_demo
    stored = [(e["kind"], e["step"], e["onset"], e["series"]) for e in result.report["events"]]
    replayed = replay_file(result.store)
    assert [(e.kind, e.step, e.onset, e.series) for e in replayed.events] == stored
    assert replayed.steps == SMALL_STEPS
    # and through the command the summary tells the user to run
    assert main(["replay", str(result.store), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(e["kind"], e["step"], e["onset"], e["series"]) for e in doc["events"]] == stored


def test_prometheus_endpoint_served_the_run_while_it_trained(small_demo):
    result, stream = small_demo
    assert result.metrics_url and result.metrics_url.startswith("http://127.0.0.1:")
    assert stream.scraped is not None, "the demo never announced its metrics endpoint"
    steps = re.findall(r'^phasewatch_step\{run="demo"\} (\S+)$', stream.scraped, flags=re.M)
    assert steps and float(steps[0]) >= 1
    assert re.search(r'^phasewatch_token_entropy_nats\{.*token_class="execution".*\} ', stream.scraped, flags=re.M)


def test_a_second_run_replaces_its_own_output_but_never_a_foreign_store(tmp_path):
    from phasewatch.demo.run import DemoConfig, prepare_out, run_demo
    from phasewatch.demo.warmup import WarmupSettings

    out = tmp_path / "again"
    config = DemoConfig(steps=2, out=out, warmup=WarmupSettings(steps=5), prompts_per_step=6, generations=2)
    first = run_demo(config, stream=io.StringIO(), progress=False)
    second = run_demo(dataclasses.replace(config, seed=1), stream=io.StringIO(), progress=False)
    assert second.report["steps"] == 2 and second.report["settings"]["seed"] == 1
    assert first.store == second.store

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "phasewatch.db").write_bytes(b"someone else's store")
    with pytest.raises(ValueError, match="not written by phasewatch demo"):
        prepare_out(foreign)
    assert (foreign / "phasewatch.db").read_bytes() == b"someone else's store"


def test_cli_rejects_bad_arguments_with_the_demo_usage(capsys):
    from phasewatch.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--steps", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: phasewatch demo" in err and "--steps" in err and "must be >= 1" in err


def test_cli_says_which_extra_to_install_when_trl_is_missing():
    import subprocess
    import sys

    # sys.modules[name] = None is how Python marks a module as not importable
    code = (
        "import sys; sys.modules['trl'] = None\n"
        "from phasewatch.cli import main\n"
        "sys.exit(main(['demo', '--steps', '1', '--out', sys.argv[1]]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "unused-out"], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert out.returncode == 2
    assert "phasewatch demo: error:" in out.stderr and "pip install 'phasewatch[trl]'" in out.stderr
    assert "trl" in out.stderr and "Traceback" not in out.stderr


def test_cli_module_is_cheap_to_import():
    import subprocess
    import sys

    code = "import sys, phasewatch.cli.demo; print(any(m in sys.modules for m in ('torch', 'trl', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "False"
