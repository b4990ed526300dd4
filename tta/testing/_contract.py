r"""The contract every W₁ estimator meets, checked without pytest: :func:`check_distance_estimator`.

The checks are properties of :math:`W_1` itself and of tta's estimator protocol, so they hold for any
estimator of it, exact, entropic or Monte-Carlo (timm runs its model tests over its whole registry; tta
runs this over :data:`tta.plugins.DISTANCES`, plugins included):

* **protocol**: a :class:`~tta.distances.DistanceEstimator` with a registry ``name``; ``estimate``
  returns a :class:`~tta.distances.W1Result` whose ``to_dict`` is plain JSON; the value is a finite
  scalar in the dtype of ``x``.
* **metric**: :math:`W_1(\mu, \mu) \approx 0`; :math:`W_1 \ge 0`; :math:`W_1(\nu, \mu) = W_1(\mu, \nu)`
  (optional: ``symmetric``); translating both measures changes nothing; multiplying both masses by
  :math:`c` multiplies the value by :math:`c`.
* **labels**: matching class masses take the per-label path with one subproblem per class; differing
  ones take the joint path; both values are finite.
* **calls**: the same input gives the same value twice (optional: ``deterministic``), finite gradients
  w.r.t. points and weights (when the class says ``is_differentiable``); malformed input raises
  ``ValueError``.
* **accuracy** (optional, ``rtol``): within ``rtol`` of POT's exact EMD on random clouds, unlabelled
  and labelled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tta.distances import DistanceEstimator, LabelledMeasure, W1Result
from tta.testing._oracles import labelled_clouds, matching_target_weights, random_clouds, reference_w1

__all__ = ["CheckResult", "ContractReport", "ContractViolation", "check_distance_estimator"]

EstimatorFactory = Callable[[], DistanceEstimator]


class ContractViolation(AssertionError):
    """An estimator failed one or more contract checks; the message lists each failure."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one contract check.

    Args:
        name: The check (``"identity"``, ``"symmetry"``...).
        passed: Whether it held.
        detail: What was measured, or why it failed.
    """

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ContractReport:
    """Every check run by :func:`check_distance_estimator` on one estimator.

    Args:
        estimator: ``repr`` of the estimator checked.
        checks: One result per check, in the order run.
    """

    estimator: str
    checks: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        """Whether every check held."""
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The checks that did not hold."""
        return tuple(c for c in self.checks if not c.passed)

    def __str__(self) -> str:
        lines = [f"distance-estimator contract for {self.estimator}:"]
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


class _Failed(Exception):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _Failed(message)


def _value(est: DistanceEstimator, *args: object) -> float:
    out = est(*args)  # type: ignore[arg-type]
    _require(isinstance(out, torch.Tensor) and out.dim() == 0, f"expected a scalar tensor, got {out!r}")
    value = float(out.detach())
    _require(math.isfinite(value), f"value is not finite: {value}")
    return value


def _close(actual: float, expected: float, rtol: float, atol: float = 0.0) -> bool:
    return abs(actual - expected) <= atol + rtol * abs(expected)


def check_distance_estimator(
    factory: EstimatorFactory | DistanceEstimator,
    *,
    rtol: float | None = None,
    symmetric: bool = True,
    deterministic: bool = True,
    identity_atol: float = 1e-3,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> ContractReport:
    r"""Run the distance-estimator contract (see the module docstring) on one estimator.

    Args:
        factory: A zero-argument callable returning a fresh estimator (e.g. the class, or
            ``lambda: DISTANCES.create("exact")``), or an estimator instance.
        rtol: Relative tolerance against POT's exact EMD on random clouds; ``None`` skips the accuracy
            check (for estimators of another quantity, e.g. a sliced distance, a lower bound of W₁).
        symmetric: Check :math:`W_1(\nu, \mu) = W_1(\mu, \nu)` (relative ``1e-6``).
        deterministic: Check that two calls on the same input agree (relative ``1e-10``).
        identity_atol: :math:`W_1(\mu, \mu)` must be at most this fraction of the feature diameter.
        seed: Seed of every cloud drawn.
        raise_on_failure: Raise :class:`ContractViolation` listing every failed check (default);
            ``False`` returns the report either way.

    Returns:
        The :class:`ContractReport`.

    Raises:
        ContractViolation: If a check fails and ``raise_on_failure``.
    """
    make: EstimatorFactory = (lambda: factory) if isinstance(factory, DistanceEstimator) else factory
    checks: list[CheckResult] = []
    try:
        label = repr(make())
    except Exception as err:  # the factory itself is broken: nothing else can run
        label = repr(factory)
        checks.append(CheckResult("construct", False, f"{type(err).__name__}: {err}"))
        return _finish(ContractReport(label, tuple(checks)), raise_on_failure)

    def run(name: str, fn: Callable[[DistanceEstimator], str]) -> None:
        try:
            detail = fn(make())
        except _Failed as err:
            checks.append(CheckResult(name, False, str(err)))
        except Exception as err:  # an unexpected error is a failed check, reported, not a crash
            checks.append(CheckResult(name, False, f"raised {type(err).__name__}: {err}"))
        else:
            checks.append(CheckResult(name, True, detail))

    x, y, a, b = random_clouds(60, 45, 4, seed=seed, weighted=True, dtype=torch.float64)
    lx_x, lx_y, lx, ly = (t.double() for t in labelled_clouds(60, 4, 3, seed=seed + 1))
    diameter = float(torch.cdist(torch.cat([x, y]), torch.cat([x, y])).max())

    def protocol(est: DistanceEstimator) -> str:
        _require(isinstance(est, DistanceEstimator), f"{type(est).__name__} is not a DistanceEstimator")
        name = type(est).name
        _require(isinstance(name, str) and name not in ("", "base"), f"class attribute name is {name!r}")
        result = est.estimate(LabelledMeasure(x, a), LabelledMeasure(y, b))
        _require(isinstance(result, W1Result), f"estimate returned {type(result).__name__}, not W1Result")
        _require(result.estimator == name, f"result.estimator {result.estimator!r} != name {name!r}")
        _require((result.n, result.m, result.d) == (60, 45, 4), f"sizes {result.n, result.m, result.d}")
        _require(result.path == "unlabelled", f"path {result.path!r} for unlabelled measures")
        payload = result.to_dict()
        json.dumps(payload)  # plain values only
        missing = {"estimator", "path", "solver", "converged", "num_subproblems", "subproblems"} - set(
            payload
        )
        _require(not missing, f"to_dict lacks {sorted(missing)}")
        _require(est.diagnostics == payload, "diagnostics differ from the last result's to_dict()")
        return f"W1Result from {name!r}, {len(payload)} diagnostic keys"

    def dtype(est: DistanceEstimator) -> str:
        for dt in (torch.float64, torch.float32):
            out = est(x.to(dt), y.to(dt), a.to(dt), b.to(dt))
            _require(out.dtype == dt, f"{dt} inputs gave a {out.dtype} value")
            _require(out.dim() == 0 and bool(torch.isfinite(out)), f"value {out!r}")
        return "scalar in the dtype of x (float64, float32)"

    def identity(est: DistanceEstimator) -> str:
        value = _value(est, x, x, a, a)
        _require(
            abs(value) <= identity_atol * diameter, f"W1(mu, mu) = {value:.3g} (diameter {diameter:.3g})"
        )
        return f"W1(mu, mu) = {value:.2e}"

    def nonnegative(est: DistanceEstimator) -> str:
        values = [
            _value(est, *random_clouds(30, 20, 3, seed=seed + s, dtype=torch.float64)) for s in range(3)
        ]
        _require(min(values) >= -1e-9 * diameter, f"negative values {values}")
        return f"min over 3 pairs {min(values):.3g}"

    def symmetry(est: DistanceEstimator) -> str:
        forward, backward = _value(est, x, y, a, b), _value(est, y, x, b, a)
        _require(_close(backward, forward, 1e-6, 1e-12), f"W(mu, nu) = {forward!r}, W(nu, mu) = {backward!r}")
        forward_l = _value(est, lx_x, lx_y, None, None, lx, ly)
        backward_l = _value(est, lx_y, lx_x, None, None, ly, lx)
        _require(_close(backward_l, forward_l, 1e-6, 1e-12), f"labelled: {forward_l!r} vs {backward_l!r}")
        return f"{forward:.6g} both ways (labelled {forward_l:.6g})"

    def translation(est: DistanceEstimator) -> str:
        v = torch.linspace(-2.0, 3.0, x.shape[1], dtype=x.dtype)
        base, moved = _value(est, x, y, a, b), _value(est, x + v, y + v, a, b)
        _require(_close(moved, base, 1e-5, 1e-9), f"W(mu, nu) = {base!r}, translated {moved!r}")
        return f"{base:.6g} before and after a joint translation"

    def homogeneity(est: DistanceEstimator) -> str:
        base, scaled = _value(est, x, y, a, b), _value(est, x, y, 3 * a, 3 * b)
        _require(_close(scaled, 3 * base, 1e-6, 1e-12), f"W(3a, 3b) = {scaled!r}, 3 W(a, b) = {3 * base!r}")
        return f"W(3a, 3b) = 3 W(a, b) = {scaled:.6g}"

    def label_paths(est: DistanceEstimator) -> str:
        uniform = torch.full((60,), 1 / 60, dtype=torch.float64)
        b_match = matching_target_weights(uniform, lx, ly)
        result = est.estimate(LabelledMeasure(lx_x, uniform, lx), LabelledMeasure(lx_y, b_match, ly))
        _require(result.path == "per_label", f"matching class masses took the {result.path!r} path")
        _require(len(result.subproblems) >= 3, f"{len(result.subproblems)} subproblem reports for 3 classes")
        _require(math.isfinite(float(result)), f"per-label value {float(result)}")
        skewed = uniform.clone()
        skewed[:10] *= 3
        skewed = skewed / skewed.sum()
        joint = est.estimate(LabelledMeasure(lx_x, skewed, lx), LabelledMeasure(lx_y, None, ly))
        _require(joint.path == "joint", f"differing class masses took the {joint.path!r} path")
        _require(math.isfinite(float(joint)), f"joint value {float(joint)}")
        return (
            f"per_label ({len(result.subproblems)} solves) = {float(result):.4g}, joint = {float(joint):.4g}"
        )

    def determinism(est: DistanceEstimator) -> str:
        first, second = _value(est, x, y, a, b), _value(est, x, y, a, b)
        fresh = _value(make(), x, y, a, b)
        _require(
            _close(second, first, 1e-10) and _close(fresh, first, 1e-10), f"{first!r}, {second!r}, {fresh!r}"
        )
        return f"{first:.10g} on two calls and on a fresh instance"

    def gradients(est: DistanceEstimator) -> str:
        xr, yr, ar = (
            x.clone().requires_grad_(True),
            y.clone().requires_grad_(True),
            a.clone().requires_grad_(True),
        )
        grads = torch.autograd.grad(est(xr, yr, ar, b), (xr, yr, ar))
        for label_, g in zip(("x", "y", "a"), grads):
            _require(bool(torch.isfinite(g).all()), f"gradient w.r.t. {label_} not finite")
        _require(float(grads[0].abs().sum()) > 0, "zero gradient w.r.t. x")
        lr = lx.clone().requires_grad_(True)
        xr2 = lx_x.clone().requires_grad_(True)
        g_l = torch.autograd.grad(est(xr2, lx_y, None, None, lr, ly), (xr2, lr), allow_unused=True)
        _require(
            all(g is None or bool(torch.isfinite(g).all()) for g in g_l), "labelled gradients not finite"
        )
        return "finite w.r.t. x, y, a (and labelled x, labels)"

    def errors(est: DistanceEstimator) -> str:
        cases = {
            "unequal masses": (x, y, a, 2 * b),
            "dimension mismatch": (x, y[:, :3]),
            "weights of the wrong shape": (x, y, a[:-1], b),
            "negative weights": (x, y, a - a.mean(), b - b.mean()),
            "one-sided labels": (lx_x, lx_y, None, None, lx, None),
            "1-D points": (x[0], y),
        }
        for what, args in cases.items():
            try:
                est(*args)  # type: ignore[arg-type]
            except ValueError:
                continue
            raise _Failed(f"{what} did not raise ValueError")
        return f"ValueError for {len(cases)} malformed inputs"

    def accuracy(est: DistanceEstimator) -> str:
        assert rtol is not None
        value, expected = _value(est, x, y, a, b), reference_w1(x, y, a, b)
        _require(_close(value, expected, rtol), f"{value!r} vs POT {expected!r} (rtol {rtol})")
        uniform = torch.full((60,), 1 / 60, dtype=torch.float64)
        b_match = matching_target_weights(uniform, lx, ly)
        value_l = _value(est, lx_x, lx_y, uniform, b_match, lx, ly)
        expected_l = reference_w1(lx_x, lx_y, uniform, b_match, lx, ly)
        _require(_close(value_l, expected_l, rtol), f"labelled {value_l!r} vs POT {expected_l!r}")
        return f"{value:.6g} vs POT {expected:.6g}; labelled {value_l:.6g} vs {expected_l:.6g}"

    run("protocol", protocol)
    run("dtype", dtype)
    run("identity", identity)
    run("nonnegative", nonnegative)
    if symmetric:
        run("symmetry", symmetry)
    run("translation", translation)
    run("mass homogeneity", homogeneity)
    run("label paths", label_paths)
    if deterministic:
        run("determinism", determinism)
    if type(make()).is_differentiable:
        run("gradients", gradients)
    run("errors", errors)
    if rtol is not None:
        run("accuracy", accuracy)
    return _finish(ContractReport(label, tuple(checks)), raise_on_failure)


def _finish(report: ContractReport, raise_on_failure: bool) -> ContractReport:
    if raise_on_failure and not report.passed:
        raise ContractViolation(str(report))
    return report
