"""Label-free targets: pseudo-labels from k-means clusters or from the transformed classifier.

v2 of the paper bounds transferability to a target without labels by giving it pseudo-labels. Two
sources are offered:

* ``kmeans``: k-means with ``k`` clusters (seeded, ``n_init=10``) fitted on the target *training*
  features; training and test points get the id of their nearest centre;
* ``transformed``: first k-means, then one fit of the bound, then the predictions (argmax) of the
  transformed classifier :math:`h'''` on both target splits replace the cluster ids, and the bound is
  fitted again.

Either way the bound is then a bound for the pseudo-labelled task, not for the (unknown) true labels;
the outputs say so. A target counts as unlabelled when any of its labels is negative (``-1``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "has_labels",
    "kmeans_pseudo_labels",
    "transformed_predictions",
    "with_target_labels",
]


def has_labels(labels: Tensor) -> bool:
    """Whether a label vector is a real labelling (non-empty, no negative "unlabelled" marker)."""
    return labels.numel() > 0 and bool((labels >= 0).all())


def kmeans_pseudo_labels(train: Tensor, test: Tensor, k: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Cluster ids of the target features: k-means fitted on ``train``, nearest centre for both splits.

    Clusters are numbered by decreasing size on ``train`` (ties by centre order), so the labelling does
    not depend on k-means' arbitrary numbering. The bound needs every class in both splits: a cluster
    that no test point falls into receives the test point closest to its centre among those whose
    own cluster keeps at least one other test point.

    Args:
        train: ``(n, d)`` training features.
        test: ``(m, d)`` test features.
        k: Number of clusters (the number of classes the target is assumed to have), ``2 <= k <= n``.
        seed: ``random_state`` of scikit-learn's ``KMeans``.

    Returns:
        ``(train_labels (n,), test_labels (m,))``, int64 in ``0..k-1``.

    Raises:
        ValueError: If ``k`` is out of range.
    """
    n = int(train.shape[0])
    if not 2 <= k <= n:
        raise ValueError(f"the number of pseudo-classes k must be in [2, {n}] (training points), got {k}")
    from sklearn.cluster import KMeans

    x = train.detach().double().cpu().numpy()
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    raw_train = torch.as_tensor(km.labels_, dtype=torch.int64)
    xt = test.detach().double().cpu().numpy()
    raw_test = torch.as_tensor(km.predict(xt), dtype=torch.int64)
    if test.shape[0] >= k:
        centres = torch.as_tensor(km.cluster_centers_)
        dist = torch.cdist(torch.as_tensor(xt), centres)  # (m, k)
        for c in range(k):
            if bool((raw_test == c).any()):
                continue
            counts_t = torch.bincount(raw_test, minlength=k)
            movable = counts_t[raw_test] > 1
            d = torch.where(movable, dist[:, c], torch.full_like(dist[:, c], float("inf")))
            raw_test[int(torch.argmin(d))] = c
    counts = torch.bincount(raw_train, minlength=k)
    order = sorted(range(k), key=lambda c: (-int(counts[c]), c))
    relabel = torch.empty(k, dtype=torch.int64)
    relabel[torch.tensor(order)] = torch.arange(k)
    return relabel[raw_train], relabel[raw_test]


@torch.no_grad()
def transformed_predictions(model: Any, z: Tensor) -> Tensor:
    """Argmax predictions of the fitted transformed classifier :math:`h'''` on features ``z``.

    Args:
        model: A fitted :class:`tta.fitting.Analysis` (or :class:`tta.modules.TaskTransferAnalysis`).
        z: ``(n, d)`` target features.
    """
    from tta import bound as B

    t, head = model.transform, model.source_head
    log_q = B.transformed_log_probs(z, head.weight, head.bias, t.log_label_map, t.exact_inverse(), t.shift)
    return log_q.argmax(-1).to(torch.int64)


def with_target_labels(features: Any, train: Tensor, test: Tensor, k: int, prefix: str = "cluster") -> Any:
    """A copy of a :class:`~tta.modules.FeaturePair` whose target labels are replaced.

    Args:
        features: The feature pair.
        train: New target training labels, ``(n,)`` in ``0..k-1``.
        test: New target test labels, ``(m,)`` in ``0..k-1``.
        k: Number of target classes.
        prefix: Class names become ``{prefix}_0 .. {prefix}_{k-1}``.
    """
    return dataclasses.replace(
        features,
        target_train=(features.target_train[0], train),
        target_test=(features.target_test[0], test),
        target_class_names=[f"{prefix}_{i}" for i in range(k)],
    )
