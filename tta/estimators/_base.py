"""The :class:`Estimator` descriptor and the decorator that registers an estimator's functional form.

Every built-in estimator is a plain function registered in :data:`tta.plugins.ESTIMATORS` under its
name, so ``ESTIMATORS.get("logme")`` is :func:`tta.estimators` and
``ESTIMATORS.create("logme", features=f, labels=y)`` is its score. Beside the registry, each built-in
carries a small descriptor (what it consumes, which direction is better, its cost) that
:func:`describe` returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from tta.plugins import ESTIMATORS

__all__ = ["Estimator", "InputKind", "describe", "register_estimator"]

InputKind = Literal["features", "probs", "pair", "pool", "metadata"]
"""What an estimator consumes.

* ``"features"``: target features ``(n, D)`` and labels ``(n,)``.
* ``"probs"``: the source head's softmax on the target, ``(n, C_s)``, and labels ``(n,)``.
* ``"pair"``: source features and labels plus target features and labels.
* ``"pool"``: one feature matrix per candidate model and shared labels; the scores are relative to
  the pool, so a pool of one is refused.
* ``"metadata"``: facts about the model only (e.g. its ImageNet top-1); the target is ignored.
"""

_KINDS = ("features", "probs", "pair", "pool", "metadata")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Estimator:
    """Descriptor of a registered transferability estimator.

    Args:
        name: Registry name (``"logme"``).
        fn: The functional form; calling the descriptor calls it.
        inputs: What the estimator consumes, see :data:`InputKind`.
        higher_is_better: Whether a larger score predicts better transfer.
        complexity: Time cost in big-O notation, in terms of ``n`` (samples), ``D`` (feature
            dimension), ``C`` (target classes), ``C_s`` (source classes), ``M`` (pool size).
    """

    name: str
    fn: Callable[..., Any]
    inputs: InputKind
    higher_is_better: bool
    complexity: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the functional form."""
        return self.fn(*args, **kwargs)


_DESCRIPTORS: dict[str, Estimator] = {}


def register_estimator(
    name: str, *, inputs: InputKind, higher_is_better: bool, complexity: str
) -> Callable[[F], F]:
    """Decorator: register a functional form in ``ESTIMATORS`` and record its descriptor.

    The function is registered unchanged (``ESTIMATORS.register(name)``), so the registry holds the
    plain function.

    Args:
        name: Registry name, a lowercase slug.
        inputs: What the estimator consumes, see :data:`InputKind`.
        higher_is_better: Whether a larger score predicts better transfer.
        complexity: Time cost in big-O notation.

    Returns:
        The decorator, which returns the function unchanged.
    """
    if inputs not in _KINDS:
        raise ValueError(f"inputs must be one of {_KINDS}, got {inputs!r}")

    def decorator(fn: F) -> F:
        ESTIMATORS.register(name)(fn)
        _DESCRIPTORS[name] = Estimator(name, fn, inputs, higher_is_better, complexity)
        return fn

    return decorator


def describe(name: str) -> Estimator:
    """The descriptor of the estimator registered as ``name`` (built-in, or a plugin's descriptor).

    Raises:
        tta.plugins.PluginNotFoundError: When no estimator is registered under ``name``.
        LookupError: When ``name`` is registered without a descriptor.
    """
    fn = ESTIMATORS.get(name)
    if isinstance(fn, Estimator):  # plugins register the descriptor itself
        return fn
    key = name.strip().lower()
    if key not in _DESCRIPTORS or _DESCRIPTORS[key].fn is not fn:
        raise LookupError(
            f"estimator {name!r} is registered without a descriptor; "
            "register it with tta.estimators.register_estimator"
        )
    return _DESCRIPTORS[key]
