"""The backward pass shared by every max-cosine backend: a gather through the argmax.

Both :mod:`~fewshot_priors.ops.similarity` (chunked backend) and
:mod:`~fewshot_priors.ops.fused` (Triton backend) differentiate ``max_m cos(x_n, y_m)``
the same way, so the math lives here, below both (``similarity`` picks ``fused`` as a
backend, so ``fused`` importing ``similarity`` back made an import cycle). The names
stay importable from :mod:`fewshot_priors.ops.similarity`.
"""

from __future__ import annotations

import torch

__all__ = ["MaxCosineFunction", "max_cosine_backward"]


def max_cosine_backward(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``s = max_m cos(x_n, y_m)`` through the argmax ``index`` (``B, N``).

    With ``d = <x, y>``, ``a = |x|``, ``b = |y|`` and ``D = a b + eps``:
    ``ds/dx = y / D - d b x / (a D^2)`` and ``ds/dy = x / D - d a y / (b D^2)``;
    the ``x / a`` and ``y / b`` terms are taken as 0 for zero vectors.
    """
    g = grad.to(x.dtype)
    ysel = torch.gather(y, 2, index.unsqueeze(1).expand(-1, y.shape[1], -1))  # B,C,N
    a = x.norm(dim=1, keepdim=True)  # B,1,N
    bn = ysel.norm(dim=1, keepdim=True)
    d = (x * ysel).sum(dim=1, keepdim=True)
    den = a * bn + eps
    xhat = torch.where(a > 0, x / a.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))
    yhat = torch.where(bn > 0, ysel / bn.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(ysel))
    g = g.unsqueeze(1)
    grad_x = g * (ysel / den - d * bn * xhat / den**2)
    grad_ysel = g * (x / den - d * a * yhat / den**2)
    grad_y = torch.zeros_like(y)
    grad_y.scatter_add_(2, index.unsqueeze(1).expand(-1, y.shape[1], -1), grad_ysel)
    return grad_x, grad_y


class MaxCosineFunction(torch.autograd.Function):
    """Base of the max-cosine autograd functions: the backward is a gather through the argmax.

    A subclass's ``forward(ctx, x, y, eps, option)`` computes ``(values, index)`` its
    own way and calls :meth:`save` with them.
    """

    @staticmethod
    def save(ctx, x, y, index, eps):
        ctx.save_for_backward(x, y, index)
        ctx.eps = eps
        ctx.mark_non_differentiable(index)

    @staticmethod
    def backward(ctx, grad_values, _grad_index):
        x, y, index = ctx.saved_tensors
        grad_x, grad_y = max_cosine_backward(grad_values, x, y, index, ctx.eps)
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_y if ctx.needs_input_grad[1] else None,
            None,
            None,
        )
