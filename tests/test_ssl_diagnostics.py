"""Collapse diagnostics (embedding std, alignment, uniformity, kNN) against known answers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot_priors.ssl.diagnostics import alignment, embedding_std, knn_accuracy, uniformity


def circle(n: int) -> torch.Tensor:
    a = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([a.cos(), a.sin()], 1)


def fibonacci_sphere(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = (1 - z * z).sqrt()
    phi = math.pi * (3 - math.sqrt(5)) * i
    return torch.stack([r * phi.cos(), r * phi.sin(), z], 1)


# ----------------------------------------------------------------------------- collapse
@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), d=st.integers(1, 16), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 1000))
def test_collapsed_embeddings_have_zero_std_and_zero_uniformity(n, d, scale, seed):
    g = torch.Generator().manual_seed(seed)
    point = torch.randn(1, d, generator=g) + 0.1
    # same direction, different lengths: normalisation makes them one point
    z = point * torch.linspace(scale, 2 * scale, n)[:, None]
    assert embedding_std(z).item() == pytest.approx(0.0, abs=1e-6)
    assert uniformity(z).item() == pytest.approx(0.0, abs=1e-5)  # log(1)
    assert alignment(z, z.flip(0)).item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- uniform on the sphere
def test_uniform_circle_known_values():
    z = circle(720)
    assert embedding_std(z).item() == pytest.approx(1 / math.sqrt(2), rel=1e-5)
    t = 2.0
    n = z.shape[0]
    full = math.exp(-2 * t) * torch.special.i0(torch.tensor(2 * t, dtype=torch.float64)).item()  # E over all pairs
    # i < j pairs leave out the n self-pairs (each exp(0) = 1): exact for evenly spaced points
    expected = math.log((n * full - 1) / (n - 1))
    assert uniformity(z, t=t).item() == pytest.approx(expected, abs=1e-4)
    assert uniformity(circle(20000)[::10], t=t).item() == pytest.approx(math.log(full), abs=2e-3)


def test_uniform_sphere_known_values():
    z = fibonacci_sphere(1500)
    assert embedding_std(z).item() == pytest.approx(1 / math.sqrt(3), rel=1e-2)
    for t in (1.0, 2.0):
        expected = math.log((1 - math.exp(-4 * t)) / (4 * t))
        assert uniformity(z, t=t).item() == pytest.approx(expected, abs=5e-3)


def test_random_high_dim_std_is_one_over_sqrt_d():
    d = 128
    z = torch.randn(4000, d, generator=torch.Generator().manual_seed(0))
    assert embedding_std(z).item() == pytest.approx(1 / math.sqrt(d), rel=0.02)
    # more uniform than any cluster
    assert uniformity(z).item() < uniformity(z[:, :2] + 5.0).item()


def test_alignment_extremes_and_rotation_invariance():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    assert alignment(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment(x, -x).item() == pytest.approx(4.0, rel=1e-5)  # antipodal, alpha = 2
    assert alignment(x, -x, alpha=1).item() == pytest.approx(2.0, rel=1e-5)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(2)))
    y = x + 0.3 * torch.randn(64, 8, generator=torch.Generator().manual_seed(3))
    assert alignment(x @ q, y @ q).item() == pytest.approx(alignment(x, y).item(), rel=1e-4)
    assert uniformity(x @ q).item() == pytest.approx(uniformity(x).item(), abs=1e-5)


# ----------------------------------------------------------------------------- kNN
def test_knn_on_separable_clusters_is_perfect_and_random_labels_are_not():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(5, 16) * 10
    y = torch.arange(5).repeat_interleave(40)
    z = centers[y] + torch.randn(200, 16, generator=g)
    perm = torch.randperm(200, generator=g)
    tr, te = perm[:120], perm[120:]
    assert knn_accuracy(z[tr], y[tr], z[te], y[te], k=10).item() == 1.0
    assert knn_accuracy(z[tr], y[tr], z[te], y[te], k=1, chunk=7).item() == 1.0
    shuffled = y[torch.randperm(200, generator=g)]
    assert knn_accuracy(z[tr], shuffled[tr], z[te], y[te], k=10).item() < 0.5


def test_knn_ties_and_k_larger_than_train():
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    test = torch.tensor([[1.0, 0.1]])
    # one vote each, equal weights: the smaller label wins
    assert knn_accuracy(train, torch.tensor([3, 1]), test, torch.tensor([1]), k=50).item() == 1.0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: embedding_std(torch.randn(1, 4)), "`z` needs at least 2"),
        (lambda: uniformity(torch.randn(4)), r"`z` must have shape N, D"),
        (lambda: alignment(torch.randn(4, 3), torch.randn(5, 3)), "`x` and `y`"),
        (lambda: knn_accuracy(torch.randn(4, 3), torch.zeros(3, dtype=torch.long), torch.randn(2, 3),
                              torch.zeros(2, dtype=torch.long)), "`train_labels`"),
        (lambda: knn_accuracy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 3),
                              -torch.ones(2, dtype=torch.long)), "`test_labels`"),
        (lambda: knn_accuracy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 2),
                              torch.zeros(2, dtype=torch.long)), "same D"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
