"""Tiny tokenizers and language models built locally, with no model hub.

The demo, the tests and the benchmarks all need a real tokenizer and a real causal LM
without network access. Tokenizers are trained here with the ``tokenizers`` library and
wrapped in ``transformers.PreTrainedTokenizerFast``; models come from a config.
"""

from __future__ import annotations

from typing import Iterable, Literal

TokenizerKind = Literal["byte_level", "metaspace"]

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    kind: TokenizerKind = "byte_level",
):
    """Train a BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    ``byte_level`` is GPT-2/Qwen/Llama-3 style (spaces become ``Ġ``); ``metaspace`` is
    SentencePiece style (spaces become ``▁``). Both keep character offsets, which the
    planning labeler relies on.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "byte_level":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        initial = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        initial = []
    else:
        raise ValueError(f"kind: expected 'byte_level' or 'metaspace', got {kind!r}")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=initial,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def tiny_causal_lm(vocab_size: int, hidden_size: int = 32, num_layers: int = 2, seed: int = 0, **overrides):
    """A randomly initialised Qwen2-architecture causal LM small enough for CPU training."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 16),
        num_key_value_heads=max(1, hidden_size // 16),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        **overrides,
    )
    return Qwen2ForCausalLM(config)
