"""Every example in examples/ runs as written (the TRL and PyTorch ones for a few steps)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_trl_example_runs_a_few_steps(tmp_path):
    pytest.importorskip("trl", reason="trl is not installed (pip install -e '.[trl]')")
    out = run_example([str(EXAMPLES / "trl_grpo.py"), "--steps", "2", "--output-dir", str(tmp_path / "run"),
                       "--store", str(tmp_path / "runs.sqlite")], tmp_path)
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+\d+\s+\d\s+\d\.\d\d\s", line)]
    assert [r[0] for r in rows] == ["1", "2"], out
    assert "phasewatch errors: 0" in out
    from phasewatch.store import Store

    assert [r.step for r in Store(tmp_path / "runs.sqlite").records("trl-example")] == [1, 2]


def test_torch_loop_example_runs_a_few_steps(tmp_path):
    out = run_example([str(EXAMPLES / "torch_loop.py"), "--steps", "2"], tmp_path)
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(steps) == 2 and all("alpha 0.20" in s for s in steps), out  # reweight=always by default
    assert "phasewatch errors: 0" in out


def run_verl_script(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """Run examples/verl/run_grpo.sh as written, with ``python3`` on PATH replaced by a shim
    that records the arguments and environment bash hands it instead of starting verl."""
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    shim = shim_dir / "python3"
    shim.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$SHIM_ARGS"\n'
                    'printf "%s" "${VERL_USE_EXTERNAL_MODULES:-}" > "$SHIM_ENV"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{shim_dir}{os.pathsep}{os.environ['PATH']}", HOME=str(tmp_path),
               SHIM_ARGS=str(tmp_path / "args"), SHIM_ENV=str(tmp_path / "env"))
    subprocess.run(["bash", str(EXAMPLES / "verl" / "run_grpo.sh"), "trainer.project_name=phasewatch-test"],
                   env=env, check=True, timeout=60)
    args = (tmp_path / "args").read_text().split("\0")[:-1]
    return args, {"VERL_USE_EXTERNAL_MODULES": (tmp_path / "env").read_text()}


def test_verl_example_script_hands_verl_the_phasewatch_switches(tmp_path):
    args, env = run_verl_script(tmp_path)
    assert args[:2] == ["-m", "verl.trainer.main_ppo"]
    assert env["VERL_USE_EXTERNAL_MODULES"] == "phasewatch.hooks.verl"
    assert "trainer.v1.trainer_mode=phasewatch" in args
    assert "+phasewatch.reweight=auto" in args
    assert args[-1] == "trainer.project_name=phasewatch-test"  # extra arguments pass through


def test_verl_example_overrides_build_the_phasewatch_trainer(tmp_path):
    """With verl installed: verl's own config accepts the example's lines and they select
    phasewatch's trainer with the example's settings (GPUs are needed only past this point)."""
    from test_hooks_verl import require_verl

    require_verl()
    import phasewatch.hooks.verl  # noqa: F401  (what VERL_USE_EXTERNAL_MODULES does)
    import verl
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.v1 import get_trainer_cls

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name="ppo_trainer", overrides=run_verl_script(tmp_path)[0][2:])
    trainer = get_trainer_cls(config.trainer.v1.trainer_mode)(config)
    assert type(trainer).__name__ == "PhaseWatchPPOTrainer" and trainer.trainer_mode == "sync"
    settings = trainer.phasewatch_config
    assert (settings.run, settings.reweight, settings.alpha, settings.metrics_port) == ("qwen3-4b-gsm8k", "auto", 0.2, 9811)
