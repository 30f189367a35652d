"""HICRA transform and reweighting schedule."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phasewatch.config import Config
from phasewatch.reweight import ReweightSchedule, hicra_advantages, last_pause_step
from phasewatch.events import Event


def _expected(adv_bt: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """Element by element, as the paper states it: planning tokens get (1+alpha)A for A > 0
    and (1-alpha)A for A < 0; other tokens keep A."""
    out = adv_bt.clone()
    for i in range(adv_bt.shape[0]):
        for j in range(adv_bt.shape[1]):
            a = float(adv_bt[i, j])
            if bool(mask[i, j]):
                out[i, j] = (1 + alpha) * a if a > 0 else (1 - alpha) * a
    return out


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 5),
    length=st.integers(1, 7),
    alpha=st.floats(0.0, 1.0),
    per_token=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hicra_matches_the_paper_elementwise(batch, length, alpha, per_token, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, length, generator=gen) < 0.4
    if per_token:
        adv = torch.randn(batch, length, generator=gen)
        adv_bt = adv
    else:
        adv = torch.randn(batch, generator=gen)
        adv_bt = adv[:, None].expand(batch, length)
    before = adv.clone()
    out = hicra_advantages(adv, mask, alpha)
    assert out.shape == (batch, length)
    assert torch.allclose(out, _expected(adv_bt, mask, alpha), atol=1e-6)
    assert torch.equal(adv, before), "the input advantages were modified"


def test_output_never_aliases_input_even_with_alpha_zero():
    adv = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    out = hicra_advantages(adv, torch.ones(2, 2, dtype=torch.bool), 0.0)
    assert torch.equal(out, adv)
    out.add_(1.0)
    assert torch.equal(adv, torch.tensor([[1.0, -2.0], [0.5, 0.0]]))


def test_mask_carries_no_gradient_and_advantage_gradient_is_right():
    adv = torch.tensor([1.0, -2.0], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], requires_grad=True)
    out = hicra_advantages(adv, mask, 0.2)
    out.sum().backward()
    assert mask.grad is None
    # d/dA of sum_t (A + 0.2|A| m_t) = T + 0.2 sign(A) sum_t m_t
    assert torch.allclose(adv.grad, torch.tensor([3 + 0.2 * 2, 3 - 0.2 * 2]))


def test_dtype_is_kept():
    adv = torch.randn(3, dtype=torch.float64)
    out = hicra_advantages(adv, torch.ones(3, 4, dtype=torch.bool), 0.2)
    assert out.dtype == torch.float64


@pytest.mark.parametrize(
    "adv, mask, alpha, message",
    [
        (torch.randn(3), torch.ones(4, 5, dtype=torch.bool), 0.2, "batch sizes differ"),
        (torch.randn(4, 6), torch.ones(4, 5, dtype=torch.bool), 0.2, "does not match"),
        (torch.randn(4, 5, 2), torch.ones(4, 5, dtype=torch.bool), 0.2, "expected shape"),
        (torch.randn(4), torch.ones(4, dtype=torch.bool), 0.2, "planning_mask"),
        (torch.ones(4, dtype=torch.int64), torch.ones(4, 5, dtype=torch.bool), 0.2, "floating dtype"),
        (torch.randn(4), torch.full((4, 5), 2.0), 0.2, "0/1"),
        (torch.randn(4), torch.ones(4, 5, dtype=torch.bool), 1.5, "alpha"),
        (torch.randn(4), torch.ones(4, 5, dtype=torch.bool), float("nan"), "alpha"),
        ([1.0, 2.0], torch.ones(2, 5, dtype=torch.bool), 0.2, "torch tensors"),
    ],
)
def test_bad_input_is_named(adv, mask, alpha, message):
    with pytest.raises(ValueError, match=message):
        hicra_advantages(adv, mask, alpha)


# -- schedule ---------------------------------------------------------------------------


def test_off_and_always():
    assert ReweightSchedule("off", 0.2).alpha_at(100, 5) == 0.0
    assert ReweightSchedule("always", 0.3).alpha_at(0, None) == 0.3


def test_auto_waits_for_the_shift_then_ramps_linearly():
    s = ReweightSchedule("auto", alpha=0.2, ramp_steps=4)
    assert [s.alpha_at(step, None) for step in range(10)] == [0.0] * 10
    got = [s.alpha_at(step, 10) for step in range(8, 17)]
    assert got == pytest.approx([0, 0, 0.05, 0.10, 0.15, 0.2, 0.2, 0.2, 0.2])
    assert ReweightSchedule("auto", alpha=0.2, ramp_steps=0).alpha_at(10, 10) == 0.2


def test_pause_is_latched_by_default_and_can_resume_with_a_ramp():
    latched = ReweightSchedule("always", alpha=0.2, ramp_steps=2)
    assert latched.alpha_at(49, None, pause_step=50) == 0.2
    assert latched.alpha_at(50, None, pause_step=50) == 0.0
    assert latched.alpha_at(10_000, None, pause_step=50) == 0.0
    resumes = ReweightSchedule("always", alpha=0.2, ramp_steps=2, pause_steps=5)
    got = [resumes.alpha_at(s, None, pause_step=50) for s in range(50, 59)]
    assert got == pytest.approx([0, 0, 0, 0, 0, 0.1, 0.2, 0.2, 0.2])


def test_last_pause_step_only_counts_pausing_kinds_up_to_step():
    ev = [
        Event("entropy_explosion", 30, 29, "entropy", "health", 5.0, 3.0),
        Event("level_shift", 60, 50, "entropy", "health", 21.0, 20.0),
        Event("entropy_explosion", 80, 79, "entropy/planning", "health", 5.0, 3.0),
    ]
    assert last_pause_step(ev, ("entropy_explosion",), 70) == 30
    assert last_pause_step(ev, ("entropy_explosion",), 90) == 80
    assert last_pause_step(ev, (), 90) is None


def test_schedule_json_round_trip_and_validation():
    s = ReweightSchedule("always", alpha=0.25, ramp_steps=3, pause_on=(), pause_steps=7)
    assert ReweightSchedule.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="unknown field"):
        ReweightSchedule.from_json({"mode": "auto", "alhpa": 0.1})
    with pytest.raises(ValueError, match="mode"):
        ReweightSchedule("sometimes")
    with pytest.raises(ValueError, match="ramp_steps"):
        ReweightSchedule(ramp_steps=-1)
    with pytest.raises(ValueError, match="alpha"):
        ReweightSchedule(alpha=2)
    with pytest.raises(ValueError, match="pause_on"):
        ReweightSchedule(pause_on="entropy_explosion")


def test_from_config():
    cfg = Config(run="r1", reweight="always", alpha=0.4, ramp_steps=3)
    assert ReweightSchedule.from_config(cfg) == ReweightSchedule("always", 0.4, 3)
    paused = Config(run="r1", pause_on=("entropy_explosion", "entropy_collapse"), pause_steps=7)
    schedule = ReweightSchedule.from_config(paused)
    assert schedule.pause_on == ("entropy_explosion", "entropy_collapse") and schedule.pause_steps == 7
