r"""Negative Conditional Entropy (NCE) [1]_.

References:
    .. [1] A. T. Tran, C. V. Nguyen, T. Hassner. "Transferability and Hardness of Supervised
       Classification Tasks". ICCV 2019.
"""

from __future__ import annotations

import torch

from tta.estimators._base import register_estimator
from tta.estimators._checks import ArrayLike, check_labels, check_probs

__all__ = ["conditional_entropy", "nce"]


def conditional_entropy(joint: torch.Tensor) -> float:
    r"""Conditional entropy :math:`H(A \mid B)` of a joint distribution ``joint[a, b]``.

    The conditioning variable indexes the **columns**:

    .. math::
        H(A \mid B) = -\sum_{a, b} P(a, b) \log \frac{P(a, b)}{P(b)},

    with :math:`0 \log 0 = 0` (columns with :math:`P(b) = 0` are dropped).

    Args:
        joint: Non-negative ``(|A|, |B|)`` matrix summing to 1.

    Returns:
        :math:`H(A \mid B)` in nats, in :math:`[0, \log |A|]`.
    """
    joint = joint.to(torch.float64)
    marginal = joint.sum(dim=0, keepdim=True).expand_as(joint)
    mask = joint > 0
    p = joint[mask]
    entropy = -(p * (torch.log(p) - torch.log(marginal[mask]))).sum()
    return float(entropy.clamp_min(0.0))


@register_estimator("nce", inputs="probs", higher_is_better=True, complexity="O(n·C_s + C·C_s)")
def nce(probs: ArrayLike, labels: ArrayLike) -> float:
    r"""Negative conditional entropy of the target labels given the source head's hard predictions.

    With :math:`z_i = \arg\max_z \theta_z(x_i)` the source class predicted for target sample
    :math:`i` and the empirical joint :math:`P(y, z) = \frac1n \#\{i : y_i = y, z_i = z\}`,

    .. math::
        \mathrm{NCE} = \sum_{y, z} P(y, z) \log \frac{P(y, z)}{P(z)} = -H(Y \mid Z).

    The order matters: it is the target label given the source prediction, :math:`H(Y \mid Z)`, not
    :math:`H(Z \mid Y)`. Source classes never predicted (:math:`P(z) = 0`) drop out. Ties in the
    argmax go to the lowest source index.

    Cost: :math:`O(n \cdot C_s + C \cdot C_s)`.

    Args:
        probs: Source-head softmax on the target samples, ``(n, C_s)``; rows sum to 1.
        labels: Target labels ``(n,)``, integers in ``[0, C)``.

    Returns:
        NCE in :math:`[-\log C, 0]`; 0 when the source prediction determines the target label.
        Higher is better.

    Raises:
        ValueError: On ill-formed inputs (shapes, NaN/Inf, rows not summing to 1, non-integer labels).
    """
    p = check_probs(probs)
    y, num_classes = check_labels(labels, p.shape[0], device=p.device)
    z = p.argmax(dim=1)
    joint = torch.zeros(num_classes, p.shape[1], dtype=torch.float64, device=p.device)
    joint.index_put_((y, z), torch.ones_like(z, dtype=torch.float64), accumulate=True)
    return -conditional_entropy(joint / p.shape[0])
