"""Reference solvers and seeded clouds for testing W₁ estimators (POT in float64 is the oracle)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tta.distances import DEFAULT_LABEL_COST, label_marginals

__all__ = ["labelled_clouds", "matching_target_weights", "random_clouds", "reference_w1"]


def reference_w1(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    x_labels: Tensor | None = None,
    y_labels: Tensor | None = None,
    label_cost: float = DEFAULT_LABEL_COST,
    soft_labels: str = "mixture",
) -> float:
    r"""Exact :math:`W_1` by ``ot.emd2`` in float64 on the full ground cost, labels expanded by hand.

    Independent of tta's driver: the joint cost :math:`\|x - y\| + \lambda\|l - l'\|` is built densely
    and, with ``soft_labels="mixture"``, every soft atom :math:`(x_i, l_i)` is first split into the atoms
    :math:`(x_i, e_k)` of mass :math:`a_i l_{ik}`.

    Args:
        x: Source points ``(n, d)``.
        y: Target points ``(m, d)``.
        a: Source weights ``(n,)``; ``None``: uniform.
        b: Target weights ``(m,)``; ``None``: uniform.
        x_labels: Source label vectors ``(n, K)``, or ``None``.
        y_labels: Target label vectors ``(m, K)``, or ``None``.
        label_cost: λ.
        soft_labels: ``"mixture"`` or ``"vector"``.

    Returns:
        The value, as a Python float (scaled by the mean of the two total masses).
    """
    import ot

    xs, ys = x.detach().double().cpu().numpy(), y.detach().double().cpu().numpy()
    n, m = len(xs), len(ys)
    wa = np.full(n, 1 / n) if a is None else a.detach().double().cpu().numpy()
    wb = np.full(m, 1 / m) if b is None else b.detach().double().cpu().numpy()
    if x_labels is None or y_labels is None:
        cost = np.linalg.norm(xs[:, None] - ys[None], axis=-1)
        mass = 0.5 * (wa.sum() + wb.sum())
        return float(ot.emd2(wa / wa.sum(), wb / wb.sum(), cost, numItermax=10**7) * mass)
    lx = x_labels.detach().double().cpu().numpy()
    ly = y_labels.detach().double().cpu().numpy()
    if soft_labels == "mixture":  # atom (z_i, l_i) -> atoms (z_i, e_k) with mass w_i l_ik
        k = lx.shape[1]
        eye = np.eye(k)
        src = [(xs[i], eye[c], wa[i] * lx[i, c]) for i in range(n) for c in range(k) if lx[i, c] > 0]
        tgt = [(ys[j], eye[c], wb[j] * ly[j, c]) for j in range(m) for c in range(k) if ly[j, c] > 0]
        xs, lx, wa = (np.array(v) for v in zip(*src))
        ys, ly, wb = (np.array(v) for v in zip(*tgt))
    cost = np.linalg.norm(xs[:, None] - ys[None], axis=-1) + label_cost * np.linalg.norm(
        lx[:, None] - ly[None], axis=-1
    )
    mass = 0.5 * (wa.sum() + wb.sum())
    return float(ot.emd2(wa / wa.sum(), wb / wb.sum(), cost, numItermax=10**7) * mass)


def random_clouds(
    n: int, m: int, d: int, seed: int, weighted: bool = False, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Two seeded Gaussian clouds, the target scaled by 1.2 and shifted by 0.3.

    Args:
        n: Source points.
        m: Target points.
        d: Dimension.
        seed: Seed of the draw.
        weighted: Also draw random weights, each side normalised to mass 1.
        dtype: Floating dtype.

    Returns:
        ``(x, y, a, b)``; ``a`` and ``b`` are ``None`` unless ``weighted``.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = 1.2 * torch.randn(m, d, generator=g, dtype=dtype) + 0.3
    if not weighted:
        return x, y, None, None
    a = torch.rand(n, generator=g, dtype=dtype) + 0.1
    b = torch.rand(m, generator=g, dtype=dtype) + 0.1
    return x, y, a / a.sum(), b / b.sum()


def labelled_clouds(
    n: int, d: int, k: int, seed: int, shift: int = 0, soft: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Balanced classes with separated means (n points per side, class ``i % k`` for point ``i``).

    Args:
        n: Points per side.
        d: Dimension.
        k: Classes.
        seed: Seed of the draw.
        shift: Relabel the target (class ``c`` becomes ``(c + shift) % k``).
        soft: Blur the source labels into soft label vectors.

    Returns:
        ``(x, y, x_labels, y_labels)`` in float32; the target is the source shifted by 0.5 plus noise.
    """
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, d, generator=g)
    cls = torch.arange(n) % k
    x = means[cls] + torch.randn(n, d, generator=g)
    y = means[cls] + 0.5 + torch.randn(n, d, generator=g)
    x_labels = F.one_hot(cls, k).float()
    if soft:
        x_labels = torch.softmax(4.0 * x_labels + torch.randn(n, k, generator=g), dim=1)
    y_labels = F.one_hot((cls + shift) % k, k).float()
    return x, y, x_labels, y_labels


def matching_target_weights(a: Tensor, x_labels: Tensor, y_labels: Tensor) -> Tensor:
    """Target weights whose class masses equal the source's (uniform within each target class).

    In float64: at λ = 1e6 a class-mass gap of float32 round-off (1e-8) already adds λ√2·1e-8 ≈ 0.01 to
    the joint EMD, which the per-label path (tolerance 1e-6) rightly ignores.

    Args:
        a: Source weights ``(n,)``.
        x_labels: Source label vectors ``(n, K)``.
        y_labels: One-hot target labels ``(m, K)``.

    Returns:
        Target weights ``(m,)`` in float64.
    """
    a, x_labels, y_labels = a.double(), x_labels.double(), y_labels.double()
    mass = label_marginals(a, x_labels)  # (K,)
    cls = y_labels.argmax(1)
    counts = torch.bincount(cls, minlength=y_labels.shape[1]).to(a)
    return mass[cls] / counts[cls]
