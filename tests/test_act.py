"""The ACT/SACT math of sections 2.2-2.3 (sact_det.modeling.sact.act), property by property."""
import ast
import os

import pytest
import torch

from sact_det.modeling.sact.act import HaltingState, halting_distribution

ACT_SOURCE = os.path.join(os.path.dirname(__file__), "..", "sact_det", "modeling", "sact", "act.py")


def test_math_module_is_pure_pytorch():
    tree = ast.parse(open(ACT_SOURCE).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert "detectron2" not in imported and "torch" in imported


def run(state, xs, scores, positions=None):
    """Alg. 2 over units with outputs ``xs[l]`` and scores ``scores[l]`` (the
    last unit has none); returns the block output, eq. (10)."""
    output = 0
    for index, x in enumerate(xs):
        score = scores[index].unsqueeze(-1) if index < len(xs) - 1 else None
        output = output + state.update(score) * x
    return output


def test_figure3_example():
    # Fig. 3: h^1 + h^2 + h^3 = 0.4, the fourth unit crosses 1 - eps.
    scores = torch.tensor([0.1, 0.1, 0.2, 0.9])  # L = 5 units, h^5 = 1
    result = halting_distribution(scores, eps=0.01)
    assert result.num_units.item() == 4
    assert result.remainder.item() == pytest.approx(0.6)
    assert result.ponder_cost.item() == pytest.approx(4.6)
    assert torch.allclose(result.distribution, torch.tensor([0.1, 0.1, 0.2, 0.6, 0.0]))


def test_epsilon_allows_stopping_after_first_unit():
    # h^1 < 1 always (sigmoid), eps makes N = 1 reachable (eq. 7).
    result = halting_distribution(torch.tensor([0.995, 0.5]), eps=0.01)
    assert result.num_units.item() == 1
    assert result.remainder.item() == pytest.approx(1.0)
    assert result.ponder_cost.item() == pytest.approx(2.0)
    assert halting_distribution(torch.tensor([0.985, 0.5]), eps=0.01).num_units.item() == 2


def test_last_unit_always_halts_and_distribution_sums_to_one():
    scores = torch.rand(6, 50) * 0.1  # cumulative sum stays below 1 - eps
    result = halting_distribution(scores)
    assert (result.num_units == 7).all()
    assert torch.allclose(result.distribution.sum(0), torch.ones(50))
    assert (result.remainder >= 0).all() and (result.remainder <= 1).all()


def test_ponder_cost_gradient_is_eq12():
    torch.manual_seed(0)
    scores = torch.rand(9, 40).mul(0.45).requires_grad_()
    result = halting_distribution(scores)
    result.ponder_cost.sum().backward()
    unit = torch.arange(1, 10).view(-1, 1)
    expected = torch.where(unit < result.num_units, -1.0, 0.0)  # eq. (12)
    assert torch.equal(scores.grad, expected)
    assert (result.num_units > 1).any() and (result.num_units < 10).any()  # both cases covered


@pytest.mark.parametrize("shape", [(3,), (2, 1, 5, 7)])
def test_incremental_state_equals_closed_form(shape):
    torch.manual_seed(1)
    num_units = 8
    scores = torch.rand((num_units - 1,) + shape) * 0.5
    states = torch.randn((num_units,) + shape + (4,))  # x^l with a channel axis last
    closed = halting_distribution(scores)
    state = HaltingState(torch.ones(shape + (1,), dtype=torch.bool))
    output = run(state, states, scores)
    expected_output = (closed.distribution.unsqueeze(-1) * states).sum(0)  # eq. (10)
    assert torch.allclose(output, expected_output, atol=1e-6)
    assert torch.allclose(state.ponder_cost[..., 0], closed.ponder_cost)
    assert torch.equal(state.num_units[..., 0].long(), closed.num_units)
    assert state.all_halted


def test_incremental_gradient_matches_closed_form():
    torch.manual_seed(2)
    scores = (torch.rand(5, 6) * 0.5).requires_grad_()
    xs = torch.randn(6, 6, 3).requires_grad_()
    state = HaltingState(torch.ones(6, 1, dtype=torch.bool))
    loss = run(state, xs, scores).pow(2).sum() + state.ponder_cost.sum()
    grads = torch.autograd.grad(loss, [scores, xs])
    closed = halting_distribution(scores)
    loss_ref = (closed.distribution.unsqueeze(-1) * xs).sum(0).pow(2).sum() + closed.ponder_cost.sum()
    grads_ref = torch.autograd.grad(loss_ref, [scores, xs])
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=1e-5)


def test_zero_scores_give_the_last_unit_output():
    # ACT with h^1..h^{L-1} = 0 is the plain ResNet block: output = x^L (sec. 2.2).
    xs = torch.randn(4, 2, 3)
    state = HaltingState(torch.ones(2, 1, dtype=torch.bool))
    assert torch.equal(run(state, xs, torch.zeros(3, 2)), xs[-1])
    assert torch.equal(state.num_units, torch.full((2, 1), 4, dtype=torch.int32))
    assert torch.allclose(state.ponder_cost, torch.full((2, 1), 5.0))  # N + R = 4 + 1


def test_inactive_positions_contribute_nothing():
    active = torch.tensor([[True], [False]])
    state = HaltingState(active)
    output = run(state, torch.ones(3, 2, 5), torch.full((2, 2), 0.2))
    assert torch.allclose(output[0], torch.ones(5)) and torch.equal(output[1], torch.zeros(5))
    assert state.ponder_cost[1].item() == 0 and state.num_units[1].item() == 0


def test_rejects_bad_epsilon():
    with pytest.raises(ValueError, match="eps"):
        halting_distribution(torch.rand(3), eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        HaltingState(torch.ones(1, dtype=torch.bool), eps=1.5)


def test_non_finite_halting_scores_are_flagged():
    # NaN < 1 - eps is false: the position would silently halt; the state says so.
    state = HaltingState(torch.ones(3, dtype=torch.bool))
    state.update(torch.tensor([0.1, 0.2, 0.3]))
    assert bool(state.scores_finite)
    state.update(torch.tensor([0.1, float("nan"), 0.3]))
    assert not bool(state.scores_finite)
    state.update(None)
    assert not bool(state.scores_finite)
