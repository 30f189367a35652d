"""A plain PyTorch GRPO-style loop watched by phasewatch's Watcher (no trainer library).

Offline on a CPU: a tiny model, a tokenizer trained on the spot, a toy reward::

    python examples/torch_loop.py --steps 5

Each step: sample a group of completions per prompt, score them, turn rewards into
group-relative advantages, and hand ids, masks, logits and advantages to ``watch.step``,
which returns the advantages to use (reweighted on planning tokens once the decision says so)
and the monitor's decision. Under ``torchrun`` with an initialised process group the same
call all-reduces the statistics and broadcasts the decision.
"""

from __future__ import annotations

import argparse
import os

import torch

import phasewatch
from phasewatch.hooks import Watcher
from phasewatch.tiny import tiny_causal_lm, train_tokenizer

CORPUS = [
    "wait, but let's check the sum again. alternatively we can try another approach.",
    "first compute 3 + 4 = 7. then multiply by 2 to get 14. so the answer is 14.",
    "hmm, maybe we should try a different approach. now we can see that x = 5.",
    "therefore the result is 12. however, perhaps we made an error. okay so 6 * 2 = 12.",
]
PROMPTS = ["compute 3 + 4", "what is 2 * 7", "solve x + 1 = 6", "find the sum"]


def reward(text: str) -> float:
    """Toy reward: count digits (a stand-in for a verifier)."""
    return float(sum(ch.isdigit() for ch in text)) / 5.0


def completion_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after it."""
    is_eos = ids == eos_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).long()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--group", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--reweight", choices=("auto", "always", "off"), default="always")
    parser.add_argument("--run", default="torch-loop-example")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)

    tokenizer = train_tokenizer(CORPUS * 20, vocab_size=300, kind="metaspace")
    tokenizer.padding_side = "left"
    model = tiny_causal_lm(len(tokenizer), hidden_size=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    watch = Watcher(phasewatch.Config(run=args.run, reweight=args.reweight), tokenizer)

    for step in range(args.steps):
        prompt = tokenizer(PROMPTS, return_tensors="pt", padding=True)
        model.eval()
        with torch.no_grad():
            sequences = model.generate(
                **prompt, do_sample=True, max_new_tokens=args.max_new_tokens,
                num_return_sequences=args.group, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        prompt_len = prompt["input_ids"].shape[1]
        completion_ids = sequences[:, prompt_len:]
        mask = completion_mask(completion_ids, tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(completion_ids * mask, skip_special_tokens=True)
        rewards = torch.tensor([reward(t) for t in texts])
        grouped = rewards.view(-1, args.group)
        advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)

        model.train()
        attention = torch.cat([prompt["attention_mask"].repeat_interleave(args.group, 0), mask], dim=1)
        logits = model(input_ids=sequences, attention_mask=attention).logits[:, prompt_len - 1 : -1]

        out = watch.step(completion_ids, mask, logits=logits, advantages=advantages, rewards=rewards)

        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
        loss = -(out.advantages * logp * mask).sum() / mask.sum().clamp(min=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        values = out.record.values if out.record is not None else {}
        print(f"step {step}: loss {loss.item():+.4f} reward {rewards.mean():.2f} "
              f"planning {100 * values.get('planning_frac', 0.0):.1f}% "
              f"H(planning) {values.get('entropy/planning', float('nan')):.3f} "
              f"H(execution) {values.get('entropy/execution', float('nan')):.3f} "
              f"alpha {out.alpha:.2f} phase {out.decision.phase}")
    print(f"phasewatch errors: {watch.errors}")
    watch.close()


if __name__ == "__main__":
    main()
