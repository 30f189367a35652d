"""token_entropy: chunked, stable per-token entropy from logits.

The reference is torch.distributions.Categorical on float64 logits, an independent
implementation; memory use is measured by benchmarks/bench_entropy_memory.py, not here.
"""

from __future__ import annotations

import math

import pytest
import torch

from phasewatch.entropy import default_chunk_rows, token_entropy


def reference_entropy(logits: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Categorical(logits=logits.double(), validate_args=False).entropy()


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7, 10_000])
def test_matches_the_float64_reference_for_any_chunking(chunk_size):
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(0)) * 4
    got = token_entropy(logits, chunk_size=chunk_size)
    assert got.shape == (3, 7) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_entropy(logits), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_are_computed_in_float32(dtype):
    logits = (torch.randn(2, 5, 300, generator=torch.Generator().manual_seed(1)) * 6).to(dtype)
    got = token_entropy(logits, chunk_size=4)
    assert got.dtype == torch.float32
    # same values as the reference on the very same (rounded) logits: no extra bf16 rounding
    torch.testing.assert_close(got.double(), reference_entropy(logits.float()), rtol=1e-5, atol=1e-5)


def test_known_values_and_extremes_stay_finite():
    V = 64
    logits = torch.zeros(1, 4, V)
    logits[0, 1, 3] = 1e4  # one token certain: entropy 0, no overflow
    logits[0, 2, : V // 2] = float("-inf")  # masked half of the vocabulary: uniform over the rest
    logits[0, 3] = torch.linspace(-3e4, 3e4, V)  # huge spread
    got = token_entropy(logits, chunk_size=2)[0]
    assert got[0].item() == pytest.approx(math.log(V), rel=1e-6)
    assert got[1].item() == pytest.approx(0.0, abs=1e-6)
    assert got[2].item() == pytest.approx(math.log(V // 2), rel=1e-6)
    assert math.isfinite(got[3].item()) and got[3].item() == pytest.approx(0.0, abs=1e-3)


def test_a_row_with_nan_gives_nan_and_leaves_other_rows_alone():
    logits = torch.randn(2, 3, 10)
    logits[1, 2, 4] = float("nan")
    got = token_entropy(logits, chunk_size=4)
    assert torch.isnan(got[1, 2])
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    torch.testing.assert_close(got[mask].double(), reference_entropy(logits)[mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda x: x.transpose(0, 1).contiguous().transpose(0, 1),  # (B, T, V) with permuted strides
    lambda x: torch.cat([x, x], dim=1)[:, ::2],  # every other position
    lambda x: torch.cat([x, x], dim=2)[..., : x.shape[-1]],  # a slice of a wider vocabulary
])
def test_non_contiguous_logits(make):
    base = torch.randn(4, 6, 33, generator=torch.Generator().manual_seed(2))
    logits = make(base)
    got = token_entropy(logits, chunk_size=5)
    torch.testing.assert_close(got.double(), reference_entropy(logits), rtol=1e-5, atol=1e-5)


def test_logits_are_not_modified_and_no_graph_is_built():
    logits = torch.randn(2, 3, 17, requires_grad=True)
    before = logits.detach().clone()
    got = token_entropy(logits, chunk_size=2, temperature=0.7)
    assert torch.equal(logits.detach(), before)
    assert not got.requires_grad


def test_temperature_scales_the_logits():
    logits = torch.randn(2, 4, 40, generator=torch.Generator().manual_seed(3))
    got = token_entropy(logits, chunk_size=3, temperature=0.5)
    torch.testing.assert_close(got.double(), reference_entropy(logits / 0.5), rtol=1e-5, atol=1e-5)


def test_any_leading_shape():
    logits = torch.randn(2, 3, 4, 9)
    assert token_entropy(logits, chunk_size=5).shape == (2, 3, 4)
    assert token_entropy(torch.randn(9)).shape == ()
    assert token_entropy(torch.randn(0, 5, 9)).shape == (0, 5)


def test_default_chunk_is_about_64_mib_of_float32():
    assert default_chunk_rows(151_936) * 151_936 * 4 <= 64 * 2**20
    assert (default_chunk_rows(151_936) + 1) * 151_936 * 4 > 64 * 2**20
    assert default_chunk_rows(10**12) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(logits=torch.ones(2, 3, dtype=torch.long)), r"logits: expected a floating-point tensor"),
    (dict(logits=[[0.1, 0.2]]), r"logits: expected a torch.Tensor"),
    (dict(logits=torch.ones(2, 0)), r"logits: expected a last \(vocabulary\) dimension"),
    (dict(logits=torch.ones(2, 3), chunk_size=0), r"chunk_size: expected a positive integer"),
    (dict(logits=torch.ones(2, 3), chunk_size=2.5), r"chunk_size: expected a positive integer"),
    (dict(logits=torch.ones(2, 3), temperature=0.0), r"temperature: expected a finite number > 0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        token_entropy(**kwargs)
