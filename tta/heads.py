r"""The gradient-penalised linear head: the reference classifier :math:`h_S` and the target probe.

A linear head :math:`h(z) = \mathrm{softmax}(Wz + c)` trained with cross-entropy plus a penalty that keeps
the loss :math:`\tau`-Lipschitz in the feature (DESIGN §1.1):

.. math::
    \mathcal L = \mathrm{CE} + w_{gp}\Big[\tfrac1n\sum_i \mathrm{ReLU}(\|\nabla_z\ell(h(z_i), y_i)\| - \tau)^2
    + \tfrac1n\sum_i \mathrm{ReLU}(\|\nabla_z\ell(h(z_i), \tilde y_i)\| - \tau)^2\Big],

with :math:`\tilde y_i` a random label. For a linear head the input gradient has the closed form
:math:`\nabla_z \ell(h(z), y) = W^\top(p - e_y)`, so no double back-propagation is needed.
With ``w_gp = 0`` the same head is a plain (L2-regularised through ``weight_decay``) logistic probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HeadConfig",
    "LinearHead",
    "check_integer",
    "check_number",
    "input_gradient_norms",
    "penalised_loss",
]


@dataclass
class HeadConfig:
    r"""How a gradient-penalised linear head is trained.

    Args:
        tau: Lipschitz target :math:`\tau` for :math:`\|\nabla_z \ell\|` (0.02 for large backbones,
            0.2 for small ones).
        w_gp: Weight of the gradient penalty (0 disables it: a plain logistic-regression probe).
        steps: Optimisation steps (mini-batches).
        batch_size: Mini-batch size (capped at the number of samples).
        lr: Adam learning rate.
        weight_decay: L2 penalty on the weight (Adam's ``weight_decay``).
    """

    tau: float = 0.02
    w_gp: float = 1e4
    steps: int = 500
    batch_size: int = 512
    lr: float = 1e-2
    weight_decay: float = 0.0

    def validate(self, where: str = "head") -> None:
        """Check every field; the error names ``<where>.<field>`` and what it must be.

        Args:
            where: The config's name in the user's terms (``model.source_head``...).

        Raises:
            tta.errors.TTAInputError: For the first invalid field.
        """
        check_number(where, "tau", self.tau, low=0.0, strict=True)
        check_number(where, "w_gp", self.w_gp, low=0.0)
        check_integer(where, "steps", self.steps, low=1)
        check_integer(where, "batch_size", self.batch_size, low=1)
        check_number(where, "lr", self.lr, low=0.0)
        check_number(where, "weight_decay", self.weight_decay, low=0.0)


def check_number(
    where: str,
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    strict: bool = False,
) -> None:
    """Raise a one-line :class:`~tta.errors.TTAInputError` unless ``value`` is a finite number in range.

    Args:
        where: The config's name (``model.transform``).
        name: The field.
        value: Its value.
        low: Lower limit (``None``: none).
        high: Upper limit, inclusive (``None``: none).
        strict: Whether ``low`` itself is excluded.
    """
    from tta.errors import TTAInputError

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        if low is not None and high is not None:
            want = f"a number in {'(' if strict else '['}{low:g}, {high:g}]"
        elif low is not None:
            want = f"a number {'>' if strict else '≥'} {low:g}"
        else:
            want = "a finite number"
        raise TTAInputError(f"{where}.{name} must be {want}, got {value!r}")


def check_integer(where: str, name: str, value: Any, low: int) -> None:
    """Raise a one-line :class:`~tta.errors.TTAInputError` unless ``value`` is an integer ``≥ low``."""
    from tta.errors import TTAInputError

    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise TTAInputError(f"{where}.{name} must be an integer ≥ {low}, got {value!r}")


class LinearHead(nn.Linear):
    """A linear classifier ``logits = z W^T + c`` over frozen features, zero-initialised.

    Args:
        feature_dim: ``d``.
        num_classes: ``K``.
    """

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__(feature_dim, num_classes)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


#: Floor of the squared gradient norm before its square root (keeps the root's gradient finite).
_TINY_SQUARE = 1e-30


def input_gradient_norms(head: nn.Linear, z: Tensor, labels: Tensor) -> Tensor:
    r"""Per-sample :math:`\|\nabla_z \mathrm{CE}(Wz + c, y)\| = \|W^\top(\mathrm{softmax}(Wz+c) - e_y)\|`.

    Args:
        head: The linear head.
        z: Features, shape ``(n, d)``.
        labels: Class ids, shape ``(n,)``.

    Returns:
        Shape ``(n,)``; differentiable with respect to the head's parameters.
    """
    probs = torch.softmax(head(z), dim=-1)
    diff = probs - F.one_hot(labels.long(), probs.shape[-1]).to(probs)
    gram = head.weight @ head.weight.T  # (K, K)
    # floored before the root: a form rounded to <= 0 (seen on CUDA) would give 0 * inf = NaN gradients
    return ((diff @ gram) * diff).sum(-1).clamp_min(_TINY_SQUARE).sqrt()


def penalised_loss(
    head: nn.Linear,
    z: Tensor,
    labels: Tensor,
    tau: float,
    w_gp: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy plus the gradient penalty (true and random labels).

    Args:
        head: The linear head.
        z: Features, shape ``(n, d)``.
        labels: Class ids, shape ``(n,)``.
        tau: Lipschitz target.
        w_gp: Penalty weight.
        generator: Random generator for the random labels.

    Returns:
        The loss and a dict of detached parts (``ce``, ``penalty``, ``max_grad_norm``).
    """
    logits = head(z)
    ce = F.cross_entropy(logits, labels.long())
    if w_gp == 0:
        return ce, {"ce": ce.detach(), "penalty": torch.zeros(()), "max_grad_norm": torch.zeros(())}
    random_labels = torch.randint(0, logits.shape[-1], labels.shape, generator=generator).to(labels.device)
    g_true = input_gradient_norms(head, z, labels)
    g_rand = input_gradient_norms(head, z, random_labels)
    penalty = F.relu(g_true - tau).pow(2).mean() + F.relu(g_rand - tau).pow(2).mean()
    loss = ce + w_gp * penalty
    parts = {"ce": ce.detach(), "penalty": penalty.detach(), "max_grad_norm": g_true.detach().max()}
    return loss, parts


def __getattr__(name: str) -> object:
    # fit_linear_head lives with the fit engine (tta.fitting); kept importable from here
    if name == "fit_linear_head":
        from tta.fitting import fit_linear_head

        return fit_linear_head
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
