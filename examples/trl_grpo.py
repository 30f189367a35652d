"""GRPO with TRL, watched by phasewatch. The two phasewatch lines are marked below.

Runs offline on a CPU by default (a tiny model and a tokenizer trained on the spot, about a
second per step), so it doubles as a smoke test::

    python examples/trl_grpo.py --steps 5

With a real model (downloaded by transformers as usual) and Prometheus on port 9811::

    python examples/trl_grpo.py --model Qwen/Qwen3-0.6B --steps 300 --metrics-port 9811

Other switches: ``--reweight auto|always|off``, ``--monitor http://host:8765`` (a running
``phasewatch serve``), ``--store runs.sqlite`` (keep the records), ``--run NAME``.
"""

from __future__ import annotations

import argparse
import os
import re

from datasets import Dataset
from trl import GRPOConfig

import phasewatch
from phasewatch.hooks.trl import PhaseWatchGRPOTrainer  # phasewatch line 1 of 2

PROMPTS = [
    "What is 3 + 4? Think step by step.",
    "Compute 12 * 7. Check your work.",
    "Solve x + 5 = 13 for x.",
    "What is the sum of the first five odd numbers?",
]

TINY_CORPUS = [
    "wait, but let's check the sum again. alternatively we can try another approach.",
    "first compute 3 + 4 = 7. then multiply by 2 to get 14. so the answer is 14.",
    "hmm, maybe we should try a different approach. now we can see that x = 5.",
    "therefore the result is 12. however, perhaps we made an error. okay so 6 * 2 = 12.",
    "next we add 5 and 8 to get 13. thus the total is 13. alright, since 13 is odd we stop.",
]


def answer_reward(completions: list[str], **_: object) -> list[float]:
    """A toy reward: shows work (several numbers) and ends with a number."""
    rewards = []
    for text in completions:
        numbers = re.findall(r"-?\d+", text)
        rewards.append(min(len(numbers), 5) / 5 + (0.5 if re.search(r"\d+\s*\.?\s*$", text) else 0.0))
    return rewards


def model_and_tokenizer(name: str | None):
    if name is None:  # offline: nothing is downloaded
        from phasewatch.tiny import tiny_causal_lm, train_tokenizer

        tokenizer = train_tokenizer(TINY_CORPUS * 20, vocab_size=300, kind="metaspace")
        return tiny_causal_lm(len(tokenizer), hidden_size=32), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a causal LM name or path (default: tiny, offline)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--run", default="trl-example")
    parser.add_argument("--reweight", choices=("auto", "always", "off"), default="auto")
    parser.add_argument("--monitor", default=None, help="URL of a phasewatch serve instance")
    parser.add_argument("--store", default=None, help="SQLite file for the in-process monitor")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics here")
    parser.add_argument("--output-dir", default="runs/trl-example")
    args = parser.parse_args(argv)
    if args.model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

    model, tokenizer = model_and_tokenizer(args.model)
    trainer = PhaseWatchGRPOTrainer(
        model=model,
        reward_funcs=answer_reward,
        args=GRPOConfig(
            output_dir=args.output_dir,
            max_steps=args.steps,
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=32 if args.model is None else 512,
            logging_steps=1,
            learning_rate=1e-3 if args.model is None else 1e-6,
            report_to=[],
            save_strategy="no",
            use_cpu=args.model is None,
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 64}),
        processing_class=tokenizer,
        phasewatch=phasewatch.Config(  # phasewatch line 2 of 2
            run=args.run,
            reweight=args.reweight,
            monitor=args.monitor,
            store=args.store,
            metrics_port=args.metrics_port,
        ),
    )
    trainer.train()
    trainer.phasewatch.close()

    print(f"\n{'step':>4} {'phase':>5} {'alpha':>5} {'H planning':>10} {'H execution':>11} {'planning %':>10}")
    for row in trainer.state.log_history:
        if "phasewatch/phase" not in row:
            continue
        planning = row.get("phasewatch/entropy/planning")
        print(f"{row['step']:>4} {int(row['phasewatch/phase']):>5} {row['phasewatch/alpha']:>5.2f} "
              f"{'-' if planning is None else f'{planning:.3f}':>10} {row['phasewatch/entropy/execution']:>11.3f} "
              f"{100 * row['phasewatch/planning_frac']:>9.1f}%")
    print(f"phasewatch errors: {trainer.phasewatch.errors}, final decision: {trainer.phasewatch.decision.phase}")


if __name__ == "__main__":
    main()
