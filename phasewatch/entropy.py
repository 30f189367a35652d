"""Per-token entropy from logits, in chunks, for trainers that do not hand entropies over.

The obvious ``-(softmax(x) * log_softmax(x)).sum(-1)`` on a ``(B, T, V)`` tensor makes several
full ``(B, T, V)`` float32 copies: with a 150k vocabulary that is gigabytes per micro-batch, in
the middle of the user's training step. :func:`token_entropy` walks over the ``B*T`` rows a
chunk at a time and keeps only two float32 ``(chunk, V)`` buffers alive, whatever the dtype of
the logits (bf16/fp16 logits are upcast one chunk at a time).

Per row, with ``z = x - max(x)``, ``e = exp(z)`` and ``s = sum(e)``:
``H = log(s) - sum(e * z) / s``. Since ``z <= 0`` and ``s >= 1`` nothing overflows, and a
``-inf`` logit (a masked-out vocabulary entry) contributes exactly 0. A row containing NaN or
``+inf`` gives a NaN entropy, which :class:`phasewatch.stats.StepStats` drops and counts.
"""

from __future__ import annotations

from itertools import product

import torch

#: Default size of one float32 working buffer: chunks hold about this many bytes of logits.
DEFAULT_CHUNK_BYTES = 64 * 2**20


def default_chunk_rows(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that one float32 ``(rows, vocab_size)`` buffer is about ``chunk_bytes``."""
    return max(1, chunk_bytes // (4 * max(1, vocab_size)))


def token_entropy(
    logits: torch.Tensor,
    chunk_size: int | None = None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Entropy (nats) of the softmax over the last dimension, for every leading position.

    logits: ``(B, T, V)`` (any leading shape works) in float32, float16 or bfloat16, on any
        device. Not modified; gradients are not tracked (the result is for monitoring).
    chunk_size: rows (positions) per chunk; ``None`` picks rows so that a float32 chunk is
        about 64 MiB (:func:`default_chunk_rows`). Peak extra memory is about two such buffers
        plus the ``(B, T)`` result.
    temperature: divide logits by this before the softmax (pass the sampling temperature to
        get the entropy of the distribution tokens were actually sampled from).

    Returns a float32 tensor of shape ``logits.shape[:-1]``.
    """
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits: expected a torch.Tensor, got {type(logits).__name__}")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"logits: expected a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(
            "logits: expected a last (vocabulary) dimension of size >= 1,"
            f" got shape {tuple(logits.shape)}"
        )
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    vocab = int(logits.shape[-1])
    if chunk_size is None:
        chunk_size = default_chunk_rows(vocab)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")

    lead_shape = tuple(logits.shape[:-1])
    out = torch.empty(lead_shape, dtype=torch.float32, device=logits.device)
    rows = _row_view(logits)
    flat_out = out.view(-1)
    if rows is not None:
        chunks = (
            (rows[i : i + chunk_size], flat_out[i : i + chunk_size])
            for i in range(0, rows.shape[0], chunk_size)
        )
    else:  # not viewable as (N, V) without a copy: chunk along the last leading dimension instead
        chunks = _strided_chunks(logits, out, chunk_size)
    with torch.no_grad():
        for block, target in chunks:
            target.copy_(_chunk_entropy(block, float(temperature)))
    return out


def _row_view(logits: torch.Tensor) -> torch.Tensor | None:
    """``logits`` as ``(N, V)`` without copying, or ``None`` when its strides forbid that."""
    try:
        return logits.detach().view(-1, logits.shape[-1])
    except RuntimeError:
        return None


def _strided_chunks(logits: torch.Tensor, out: torch.Tensor, chunk_size: int):
    """Chunks of a tensor that cannot be viewed as rows: every leading index but the last,
    then slices of the last leading dimension (each slice is a strided view, not a copy)."""
    x = logits.detach()
    if x.dim() == 1:
        yield x.unsqueeze(0), out.view(1)
        return
    inner = x.shape[-2]
    for index in product(*(range(n) for n in x.shape[:-2])):
        plane, target = x[index], out[index]
        for j in range(0, inner, chunk_size):
            yield plane[j : j + chunk_size], target[j : j + chunk_size]


def _chunk_entropy(block: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of each row of a ``(rows, V)`` block; two float32 ``(rows, V)`` temporaries."""
    z = block.to(torch.float32, copy=True)  # always a fresh buffer: never touch the caller's logits
    if temperature != 1.0:
        z.div_(temperature)
    z.sub_(z.amax(dim=-1, keepdim=True))
    # -inf logits: z = -inf would give e * z = 0 * -inf = NaN; the lowest float gives e = 0 and 0.
    z.clamp_(min=torch.finfo(torch.float32).min)
    e = torch.exp(z)
    total = e.sum(dim=-1)
    e.mul_(z)
    return torch.log(total) - e.sum(dim=-1) / total
