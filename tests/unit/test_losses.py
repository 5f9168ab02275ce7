"""cass_loss against an independent statement of the paper's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cass_lightning import CASSLoss, cass_loss
from cass_lightning.losses import cosine_similarity, normalized_std


def reference_loss(t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """2 - 2 * cos(T, R), averaged over the batch, in float64 with torch's own cosine."""
    return (2 - 2 * F.cosine_similarity(t.double(), r.double(), dim=-1)).mean()


@pytest.mark.parametrize("shape", [(1, 2), (4, 10), (16, 1000), (3, 7)])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-6), (torch.bfloat16, 1e-5)]
)
def test_matches_the_formula(shape, dtype, tol):
    a, b = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    got = cass_loss(a, b)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(reference_loss(a, b).item(), abs=tol)


def test_symmetric_and_bounded():
    a, b = torch.randn(8, 50), torch.randn(8, 50)
    assert cass_loss(a, b).item() == pytest.approx(cass_loss(b, a).item(), abs=1e-7)
    assert 0.0 <= cass_loss(a, b).item() <= 4.0


def test_zero_for_equal_four_for_opposite_scale_invariant():
    a = torch.randn(5, 20)
    assert cass_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert cass_loss(a, -a).item() == pytest.approx(4.0, abs=1e-6)
    assert cass_loss(a, 7.5 * a).item() == pytest.approx(0.0, abs=1e-6)


def test_orthogonal_gives_two():
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    b = torch.tensor([[0.0, 2.0], [5.0, 0.0]])
    assert cass_loss(a, b).item() == pytest.approx(2.0, abs=1e-7)


def test_gradients_reach_both_inputs():
    a = torch.randn(4, 16, requires_grad=True)
    b = torch.randn(4, 16, requires_grad=True)
    cass_loss(a, b).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert b.grad is not None and b.grad.abs().sum() > 0


def test_gradient_matches_autograd_of_reference():
    a = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    cass_loss(a, b).backward()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    reference_loss(a2, b2).backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1e-4, 1e-6, 0.0])
def test_finite_for_near_zero_half_precision(dtype, scale):
    # In fp16 the squares of 1e-4 underflow to 0: a naive norm gives 0/0.
    a = (torch.randn(4, 1000) * scale).to(dtype).requires_grad_()
    b = (torch.randn(4, 1000) * scale).to(dtype).requires_grad_()
    loss = cass_loss(a, b)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_fp32_under_autocast():
    a, b = torch.randn(4, 32), torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cass_loss(a.bfloat16(), b.bfloat16())
    assert loss.dtype == torch.float32


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="equal shapes"):
        cass_loss(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match=r"\(batch, dim\)"):
        cass_loss(torch.randn(4), torch.randn(4))


def test_module_wrapper_equals_function():
    a, b = torch.randn(6, 12), torch.randn(6, 12)
    assert CASSLoss()(a, b).item() == pytest.approx(cass_loss(a, b).item())


def test_collapse_statistics():
    spread = torch.randn(256, 64)
    collapsed = torch.ones(256, 64) + 1e-3 * torch.randn(256, 64)
    # Spread outputs: about 1/sqrt(dim) per dimension; collapsed: about 0.
    assert normalized_std(spread).item() == pytest.approx(64**-0.5, rel=0.15)
    assert normalized_std(collapsed).item() < 1e-3
    assert cosine_similarity(collapsed, collapsed).item() == pytest.approx(1.0, abs=1e-5)
