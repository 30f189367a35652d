"""The demo's starting model: a tokenizer and a tiny causal LM trained on the warm-up corpus.

RL needs a model that already writes solutions; a randomly initialised one never earns a
reward. So the demo first fits a tiny Qwen2-architecture model to the warm-up traces of
:mod:`phasewatch.demo.corpus` with plain supervised next-token training on the completion
tokens. The model comes out the way the corpus is: a narrow planning habit and sloppy
arithmetic. Nothing is downloaded: the tokenizer is trained here (byte-level BPE, as
GPT-2/Qwen) and the model is built from a config (:mod:`phasewatch.tiny`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from phasewatch.demo.corpus import WarmupCorpus


@dataclass(frozen=True)
class WarmupSettings:
    """Size of the model and length of its supervised warm-up (defaults: ~105k parameters,
    ~1-2 minutes on a 2-core CPU)."""

    vocab_size: int = 400
    hidden_size: int = 64
    num_layers: int = 2
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 3e-3
    tokenizer_texts: int = 5000

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "batch_size", "tokenizer_texts"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)!r}")
        if int(self.steps) < 0:
            raise ValueError(f"steps: must be >= 0, got {self.steps!r}")
        if not float(self.learning_rate) > 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate!r}")


def build_tokenizer(corpus: WarmupCorpus, settings: WarmupSettings, rng: random.Random) -> Any:
    """A byte-level BPE tokenizer trained on warm-up traces (numbers up to the corpus's
    largest sums become single tokens)."""
    from phasewatch.tiny import train_tokenizer

    texts = [prompt + completion for prompt, completion in (corpus.example(rng) for _ in range(settings.tokenizer_texts))]
    return train_tokenizer(texts, vocab_size=settings.vocab_size)


def build_model(tokenizer: Any, settings: WarmupSettings, seed: int) -> Any:
    """A freshly initialised tiny causal LM whose vocabulary matches ``tokenizer``."""
    from phasewatch.tiny import tiny_causal_lm

    return tiny_causal_lm(len(tokenizer), hidden_size=settings.hidden_size, num_layers=settings.num_layers, seed=seed)


def _batch(tokenizer: Any, pairs: list[tuple[str, str]]):
    """Right-padded ids, attention mask and labels; the loss covers completion tokens and EOS
    only. Prompt and completion are tokenized separately, exactly as GRPO sees them later."""
    import torch

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows, labels = [], []
    for prompt, completion in pairs:
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion)["input_ids"] + [eos]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(l)] = torch.tensor(l)
        mask[i, : len(r)] = 1
    return ids, mask, lab


def supervised_warmup(
    model: Any,
    tokenizer: Any,
    corpus: WarmupCorpus,
    settings: WarmupSettings,
    rng: random.Random,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Fit ``model`` to fresh warm-up traces for ``settings.steps`` steps (AdamW, 50-step
    linear warm-up then linear decay, gradient clipping at 1). Returns the loss per step;
    ``on_step(step, loss)`` is called after each step (progress display)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    total = max(1, settings.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1.0 - s / total)
    )
    model.train()
    losses: list[float] = []
    for step in range(settings.steps):
        ids, mask, labels = _batch(tokenizer, [corpus.example(rng) for _ in range(settings.batch_size)])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        value = float(loss.detach())
        losses.append(value)
        if on_step is not None:
            on_step(step, value)
    return losses
