"""Baseline transferability estimators, as pure float64 functions.

Each estimator is one function registered in :data:`tta.plugins.ESTIMATORS` under its name:

========== ======== ===========================================
name       inputs   function
========== ======== ===========================================
nce        probs    :func:`nce`
leep       probs    :func:`leep`
nleep      features :func:`nleep`
hscore     features :func:`hscore`
hscore_reg features :func:`hscore_reg`
logme      features :func:`logme`
transrate  features :func:`transrate`
gbc        features :func:`gbc`
sfda       features :func:`sfda`
knn        features :func:`knn`
ncti       pool     :func:`ncti`
etran      pool     :func:`etran`
f_otce     pair     :func:`f_otce`
jc_otce    pair     :func:`jc_otce`
static     metadata :func:`static`
========== ======== ===========================================

All are higher-is-better. :func:`score` calls one by name; :func:`describe` returns its
:class:`Estimator` descriptor. Importing this package imports torch only: scikit-learn, SciPy and
POT are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import Any

from tta.estimators._base import Estimator, InputKind, describe, register_estimator
from tta.estimators._gbc import bhattacharyya_distances, gbc
from tta.estimators._hscore import hscore, hscore_reg
from tta.estimators._knn import knn
from tta.estimators._leep import leep, nleep
from tta.estimators._logme import log_evidence, logme
from tta.estimators._nce import conditional_entropy, nce
from tta.estimators._otce import f_otce, jc_otce, label_distances
from tta.estimators._pool import etran, ncti, ncti_terms
from tta.estimators._sfda import fisher_posteriors, fisher_shrinkage, sfda
from tta.estimators._static import static
from tta.estimators._transrate import coding_rate, transrate
from tta.plugins import ESTIMATORS

__all__ = [
    "Estimator",
    "InputKind",
    "bhattacharyya_distances",
    "coding_rate",
    "conditional_entropy",
    "describe",
    "etran",
    "f_otce",
    "fisher_posteriors",
    "fisher_shrinkage",
    "gbc",
    "hscore",
    "hscore_reg",
    "jc_otce",
    "knn",
    "label_distances",
    "leep",
    "log_evidence",
    "logme",
    "nce",
    "ncti",
    "ncti_terms",
    "nleep",
    "register_estimator",
    "score",
    "sfda",
    "static",
    "transrate",
]


def score(name: str, **inputs: Any) -> Any:
    """Compute the estimator registered as ``name`` on keyword ``inputs``.

    Example::

        score("logme", features=f, labels=y)
        score("ncti", features=[f1, f2, f3], labels=y)  # one float per model

    Args:
        name: Registry name (see :func:`tta.plugins.ESTIMATORS.names`).
        **inputs: The estimator's keyword arguments, passed unchanged.

    Returns:
        A float, or a list of floats for pool-relative estimators.

    Raises:
        tta.plugins.PluginNotFoundError: For an unknown name, with close matches.
    """
    return ESTIMATORS.get(name)(**inputs)
