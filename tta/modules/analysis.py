"""``TaskTransferAnalysis``: the frozen backbone plus the learnable transform head, as a LightningModule.

Glue only: every number comes from :mod:`tta.bound`, :mod:`tta.heads`, :mod:`tta.fitting` and
:mod:`tta.distances`. One ``fit`` runs four phases, one optimiser step per training step, so that the
progress bar, logging and checkpoints cover them all:

1. the reference classifier :math:`h_S` (gradient-penalised) on the reference training features;
2. the gradient-penalised target probe (the ground truth the bound covers);
3. the standard target probe (plain L2 logistic regression: what users actually train);
4. the transform (D, B, A, Ā, b), whose loss is the bound (or the authors' objective).

``test`` evaluates the bound and every classifier on the test splits.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from tta import bound as B
from tta.backbones import Backbone, create_backbone
from tta.distances import DistanceEstimator, create_distance
from tta.fitting import (
    BestTransform,
    EvalConfig,
    TransformConfig,
    evaluate_bound,
    finish_transform,
    initialise_transform,
    is_selection_step,
    selects_best,
    step_objective,
    transform_optimizer,
)
from tta.heads import HeadConfig
from tta.health import ConditionGuard, WarningLog, check_finite_gradients
from tta.modules.probe import LinearProbe, ProbeMetrics
from tta.transforms import TaskTransform

__all__ = ["TaskTransferAnalysis"]

PHASES = ("source_head", "probe", "standard_probe", "transform")


def _spec_name(spec: object) -> str | None:
    """A registry name as given, or the class name of an instance (for the saved hyper-parameters)."""
    return spec if spec is None or isinstance(spec, str) else type(spec).__name__


class TaskTransferAnalysis(pl.LightningModule):
    """Bound the transferability of a frozen backbone from a reference task to a target task.

    Args:
        backbone: The frozen feature extractor: a registered name (``efficientnet_lite0``), a
            :class:`~tta.backbones.Backbone` (``class_path``/``init_args`` in YAML), or ``None`` when the
            data module holds precomputed features (:meth:`TaskPairDataModule.from_features`).
        source_head: Training of the reference classifier :math:`h_S`.
        probe: Training of the gradient-penalised target probe (the ground truth covered by the bound).
        standard_probe: Training of the plain L2 logistic-regression target probe (``w_gp: 0``).
        transform: How the transform is learned (mode, algorithm, steps, learning rates, λ's).
        evaluation: How the bound is evaluated on the test splits.
        distance: Wasserstein estimator used while learning: a registered name (``auto``, ``exact``,
            ``sinkhorn``) or an instance.
        eval_distance: Wasserstein estimator used for the reported bound (``auto``: exact EMD up to a few
            thousand points per class, Sinkhorn beyond).
        seed: Seed of every random draw of the fit (batches, random labels, initialisation).
    """

    def __init__(
        self,
        backbone: Backbone | str | None = "efficientnet_lite0",
        source_head: HeadConfig | None = None,
        probe: HeadConfig | None = None,
        standard_probe: HeadConfig | None = None,
        transform: TransformConfig | None = None,
        evaluation: EvalConfig | None = None,
        distance: DistanceEstimator | str = "auto",
        eval_distance: DistanceEstimator | str = "auto",
        seed: int = 0,
    ):
        super().__init__()
        self.backbone = create_backbone(backbone) if isinstance(backbone, str) else backbone
        if self.backbone is not None:
            self.backbone.requires_grad_(False)
        self.source_head_config = source_head or HeadConfig()
        self.probe_config = probe or HeadConfig()
        self.standard_probe_config = standard_probe or HeadConfig(w_gp=0.0, weight_decay=1e-2)
        self.transform_config = transform or TransformConfig()
        self.eval_config = evaluation or EvalConfig()
        # plain dicts only, so that checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {
                "backbone": _spec_name(backbone),
                "source_head": asdict(self.source_head_config),
                "probe": asdict(self.probe_config),
                "standard_probe": asdict(self.standard_probe_config),
                "transform": asdict(self.transform_config),
                "evaluation": asdict(self.eval_config),
                "distance": _spec_name(distance),
                "eval_distance": _spec_name(eval_distance),
                "seed": seed,
            }
        )
        self.distance = create_distance(distance)
        self.eval_distance = create_distance(eval_distance)
        self.seed = seed
        self.automatic_optimization = False
        self.strict_loading = False  # the frozen backbone is rebuilt from its config, not stored
        self.register_buffer("step_counter", torch.zeros((), dtype=torch.long))
        # transform.max_condition; its state (where it stopped, cond(A) then) travels in checkpoints
        self._guard: ConditionGuard | None = None
        self.warning_log = WarningLog()
        self.source_head: LinearProbe | None = None
        self.probe: LinearProbe | None = None
        self.standard_probe: LinearProbe | None = None
        self.transform: TaskTransform | None = None
        self._class_losses: Tensor | None = None
        self._best: BestTransform | None = None
        self._best_state: dict[str, Any] | None = None
        self.timings: dict[str, float] = {}
        self.result: dict[str, Any] = {}

    # ---------------------------------------------------------------- structure
    @property
    def phase_steps(self) -> dict[str, int]:
        """Number of training steps of each phase."""
        learnable = self.transform_config.mode != "fixed_all"
        return {
            "source_head": self.source_head_config.steps,
            "probe": self.probe_config.steps,
            "standard_probe": self.standard_probe_config.steps,
            "transform": self.transform_config.steps if learnable else 0,
        }

    @property
    def total_steps(self) -> int:
        """All training steps of a fit (the data module sizes its loader by it)."""
        return sum(self.phase_steps.values())

    def phase_of(self, step: int) -> tuple[str, int]:
        """The phase that global step ``step`` belongs to, and the step within it."""
        for name, n in self.phase_steps.items():
            if step < n:
                return name, step
            step -= n
        return "done", step

    @property
    def features(self) -> Any:
        """The data module's standardised feature splits."""
        return self.trainer.datamodule.features  # type: ignore[union-attr]

    def setup(self, stage: str) -> None:
        ddp_kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", None)
        if isinstance(ddp_kwargs, dict):  # each phase updates only its own parameters
            ddp_kwargs.setdefault("find_unused_parameters", True)
        if self.transform is not None:
            return
        f = self.features
        d, k_s, k_t = f.feature_dim, f.num_source_classes, f.num_target_classes
        self.source_head = LinearProbe(d, k_s, self.source_head_config, task="reference", seed=self.seed)
        self.probe = LinearProbe(d, k_t, self.probe_config, task="target", seed=self.seed + 1)
        self.standard_probe = LinearProbe(
            d, k_t, self.standard_probe_config, task="target", seed=self.seed + 2
        )
        self.transform = TaskTransform(k_s, k_t, d, mode=self.transform_config.mode)
        self.transformed_metrics = ProbeMetrics(k_t)
        if stage == "fit":
            self._init_transform()

    @torch.no_grad()
    def _init_transform(self) -> None:
        assert self.transform is not None
        f = self.features
        initialise_transform(self.transform, f.source_train, f.target_train, self.transform_config, self.seed)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        assert self.source_head and self.probe and self.standard_probe and self.transform
        optimizers = [
            self.source_head.make_optimizer(),
            self.probe.make_optimizer(),
            self.standard_probe.make_optimizer(),
        ]
        transform_opt = transform_optimizer(self.transform, self.transform_config)
        if transform_opt is not None:
            optimizers.append(transform_opt)
        return optimizers

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._best is not None:
            checkpoint["tta_best_transform"] = self._best.state_dict()
        elif self._best_state is not None:  # resumed, and saved again before the transform phase went on
            checkpoint["tta_best_transform"] = self._best_state
        # what a resumed fit needs to report the same result (transform_stopped_at, selected_step, the
        # phases' seconds so far, the numerical warnings already seen)
        checkpoint["tta_timings"] = dict(self.timings)
        if self._guard is not None:  # transform.max_condition: the last well-conditioned state
            checkpoint["tta_condition_guard"] = self._guard.state_dict()
        checkpoint["tta_warning_log"] = self.warning_log.state_dict()["entries"]
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("backbone.")]:
            del state[key]

    # ---------------------------------------------------------------- training
    def _source_class_losses(self) -> Tensor:
        if self._class_losses is None:
            assert self.source_head is not None
            z, y = self.features.source_train
            with torch.no_grad():
                losses = F.cross_entropy(
                    self.source_head.head(z.to(self.device)), y.to(self.device), reduction="none"
                )
            self._class_losses = B.class_mean_losses(
                losses, y.to(self.device), self.features.num_source_classes
            )
        return self._class_losses

    def training_step(self, batch: Any, batch_idx: int) -> None:
        step = int(self.step_counter)
        phase, local = self.phase_of(step)
        started = time.perf_counter()
        optimizers = self.optimizers()
        if not isinstance(optimizers, list):
            optimizers = [optimizers]
        f = self.features
        if phase in ("source_head", "probe", "standard_probe"):
            probe: LinearProbe = getattr(self, phase)
            z, y = f.source_train if phase == "source_head" else f.target_train
            loss, parts = probe.loss_on_batch(z.to(self.device), y.to(self.device), local)
            opt = optimizers[PHASES.index(phase)]
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            self._log_step(
                {f"train/{phase}_loss": loss, **{f"train/{phase}_{k}": v for k, v in parts.items()}}
            )
        elif phase == "transform" and (self._converged(local) or self.ill_conditioned_at >= 0):
            pass  # stopped early (transform.patience or transform.max_condition): the rest are no-ops
        elif phase == "transform":
            assert self.transform is not None and self.source_head is not None
            p_t = B.label_prior(f.target_train[1], f.num_target_classes).to(self.device)
            where = f"transform step {local}"
            with self.warning_log.capture(where, self.distance):
                objective, parts = step_objective(
                    self.transform,
                    self.source_head.head,
                    self._source_class_losses(),
                    f.source_train,
                    f.target_train,
                    p_t,
                    self.distance,
                    self.transform_config,
                    self.seed,
                    local,
                )
            best = self._best_transform()
            guard = self._condition_guard()
            with self.warning_log.capture(where, self.distance):
                if guard.enabled and guard.state is None:  # first step, or resumed from a checkpoint
                    guard.check(self.transform, local - 1)
                if best is not None and local == 0:
                    best.update(self.transform, -1)
            opt = optimizers[3]
            opt.zero_grad()
            self.manual_backward(objective)
            check_finite_gradients(self.transform, local)
            opt.step()
            values = {f"train/{k}": v for k, v in parts.items()}
            force = False
            with self.warning_log.capture(where, self.distance):
                if guard.due(local):
                    well_conditioned = guard.check(self.transform, local)
                    values["train/cond_A"] = guard.last_condition
                    force = True
                    if not well_conditioned:  # the last well-conditioned state is back in self.transform
                        self.timings.setdefault("transform_stopped_at", float(local + 1))
                if (
                    guard.stopped_at is None
                    and best is not None
                    and is_selection_step(self.transform_config, local)
                ):
                    values["train/selection_bound"] = best.update(self.transform, local)
                    force = True
            self._log_step(values, force=force)
        self.step_counter += 1
        if int(self.step_counter) == self.total_steps:
            self._finish_fit()  # before the end-of-epoch checkpoint, so that it holds the final transform
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - started

    def _converged(self, local: int) -> bool:
        """Whether convergence-based stopping (``transform.patience > 0``) has ended the transform phase.

        Recorded as ``timings["transform_stopped_at"]`` (the first transform step skipped), beside
        ``timings["selected_step"]``.
        """
        best = self._best_transform() if self.transform_config.patience > 0 else None
        if best is None or not best.converged:
            return False
        self.timings.setdefault("transform_stopped_at", float(local))
        return True

    def _condition_guard(self) -> ConditionGuard:
        """The cond(A) check of the transform phase (``transform.max_condition``)."""
        if self._guard is None:
            self._guard = ConditionGuard(self.transform_config)
        return self._guard

    @property
    def ill_conditioned_at(self) -> int:
        """The transform step after which cond(A) exceeded ``transform.max_condition`` (``-1``: none)."""
        stopped = self._guard.stopped_at if self._guard is not None else None
        return -1 if stopped is None else int(stopped)

    def _numerical_record(self) -> tuple[dict[str, Any], list[str]]:
        """The cond(A) stop (``stopped_ill_conditioned_at``...) and the run's warnings, for the result."""
        guard = self._condition_guard()
        messages = self.warning_log.messages()
        if guard.stopped_at is not None and not any("max_condition" in m for m in messages):
            messages.insert(  # a checkpoint saved without the warning log
                0,
                f"cond(A) = {float(guard.cond_at_stop or 0.0):.3g} exceeded transform.max_condition = "
                f"{self.transform_config.max_condition} after transform step {guard.stopped_at}; the "
                "transform phase stopped early and kept the last well-conditioned state",
            )
        return guard.record(), messages

    def _log_step(self, values: dict[str, Any], force: bool = False) -> None:
        """Log one step's values straight to the logger, every ``log_every_n_steps`` steps.

        All phases share one epoch, so values logged through ``self.log`` in an earlier phase would be
        re-logged as stale values at every later step; the progress bar shows the first value only.
        """
        first = next(iter(values))
        self.log(first.split("/", 1)[1], values[first], prog_bar=True, logger=False)
        step = int(self.step_counter)
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 1) or 1))
        if self.logger is None or not (force or (step + 1) % every == 0):
            return
        metrics = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in values.items()}
        self.logger.log_metrics(metrics, step=step)

    def _best_transform(self) -> BestTransform | None:
        if self._best is None and selects_best(self.transform_config):
            assert self.source_head is not None
            f = self.features
            self._best = BestTransform(
                self.source_head.head,
                f.source_train,
                f.target_train,
                self.distance,
                self.transform_config,
                self.seed,
            )
            if self._best_state is not None:
                self._best.load_state_dict(self._best_state)
        return self._best

    def _finish_fit(self) -> None:
        """Restore the best transform state, refit the label-map bias, set Ā = A⁻¹ (``tta``)."""
        if self.transform is None:
            return
        best = self._best_transform()
        if best is not None:
            best.restore(self.transform)
            self.timings["selected_step"] = float(best.step)
        p_t = B.label_prior(self.features.target_train[1], self.features.num_target_classes)
        finish_transform(self.transform, p_t, self.transform_config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._best_state = checkpoint.get("tta_best_transform")
        self._best = None  # rebuilt from _best_state when next needed
        self.timings.update(checkpoint.get("tta_timings") or {})
        guard_state = checkpoint.get("tta_condition_guard")
        if guard_state:
            self._condition_guard().load_state_dict(guard_state)
        saved = checkpoint.get("tta_warning_log") or {}
        self.warning_log.entries.update({k: dict(v) for k, v in saved.items()})

    # ---------------------------------------------------------------- evaluation
    def on_test_epoch_start(self) -> None:
        self._test_started = time.perf_counter()
        for m in (self.transformed_metrics, self.probe.metrics, self.standard_probe.metrics):  # type: ignore[union-attr]
            m.reset()
        assert self.transform is not None
        import copy

        t = copy.deepcopy(self.transform)
        if self.eval_config.match_label_marginal:
            t.match_label_marginal(B.label_prior(self.features.target_test[1], t.num_target_classes))
        self._eval_transform = t
        self._eval_inverse = t.exact_inverse() if self.eval_config.inverse == "exact" else t.inverse.detach()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        idx = batch[0] if isinstance(batch, (list, tuple)) else batch
        z_all, y_all = self.features.target_test
        z, y = z_all[idx].to(self.device), y_all[idx].to(self.device)
        t, head = self._eval_transform, self.source_head.head  # type: ignore[union-attr]
        log_q = B.transformed_log_probs(
            z, head.weight, head.bias, t.log_label_map, self._eval_inverse, t.shift
        )
        self.transformed_metrics.update(log_q, y)
        self.probe.metrics.update(self.probe(z), y)  # type: ignore[union-attr]
        self.standard_probe.metrics.update(self.standard_probe(z), y)  # type: ignore[union-attr]

    def on_test_epoch_end(self) -> None:
        f = self.features
        assert self.transform is not None and self.source_head is not None
        with self.warning_log.capture("test", self.eval_distance):
            terms = evaluate_bound(
                self.transform,
                self.source_head.head,
                f.source_test,
                f.target_test,
                self.eval_distance,
                self.eval_config,
                label_cost=self.transform_config.label_cost,
            )
        numerics, run_warnings = self._numerical_record()
        metrics = {
            "transformed": self.transformed_metrics.compute(),
            "probe": self.probe.metrics.compute(),  # type: ignore[union-attr]
            "standard_probe": self.standard_probe.metrics.compute(),  # type: ignore[union-attr]
        }
        source_acc = float((self.source_head(f.source_test[0]).argmax(-1) == f.source_test[1]).float().mean())
        self.timings["evaluation"] = time.perf_counter() - self._test_started
        result: dict[str, Any] = {
            "bound": terms["bound"],
            "terms": {
                k: terms[k] for k in ("weighted_source_loss", "conditional_entropy", "tau_w1", "tau", "w1")
            },
            "transformed_classifier": {
                "target_ce": metrics["transformed"]["ce"],
                "target_acc": metrics["transformed"]["acc"],
                "target_ece": metrics["transformed"]["ece"],
            },
            "probe": {
                "target_ce": metrics["probe"]["ce"],
                "target_acc": metrics["probe"]["acc"],
                "target_ece": metrics["probe"]["ece"],
            },
            "standard_probe": {
                "target_ce": metrics["standard_probe"]["ce"],
                "target_acc": metrics["standard_probe"]["acc"],
                "target_ece": metrics["standard_probe"]["ece"],
            },
            "gap": terms["bound"] - metrics["probe"]["ce"],
            "bound_covers_probe_exactly": terms["label_map_is_hard"],
            "reference_classifier": {"source_test_acc": source_acc},
            "details": {**{k: v for k, v in terms.items() if k not in ("prior", "label_map")}, **numerics},
            "warnings": run_warnings,
            "determinism": {
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            },
            "prior": terms["prior"],
            "label_map": terms["label_map"],
            "seed": self.seed,
            "mode": self.transform_config.mode,
            "algorithm": self.transform_config.algorithm,
            "timings": {**getattr(f, "timings", {}), **self.timings},
            "data": getattr(f, "summary", lambda: {})(),
        }
        self.result = result
        log = {
            "test/bound": terms["bound"],
            "test/weighted_source_loss": terms["weighted_source_loss"],
            "test/conditional_entropy": terms["conditional_entropy"],
            "test/tau": terms["tau"],
            "test/w1": terms["w1"],
            "test/tau_w1": terms["tau_w1"],
            "test/bound_certified": terms["bound_certified"],
            "test/gap": result["gap"],
            "test/cond_A": terms["cond_A"],
        }
        for name, values in metrics.items():
            for k, v in values.items():
                log[f"test/{name}_{k}"] = v
        self.log_dict(log)
        self._log_figures(terms)

    def _log_figures(self, terms: dict[str, Any]) -> None:
        logger = self.logger
        experiment = getattr(logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_figure") or self.global_rank != 0:
            return
        from tta.modules.figures import bound_decomposition_figure, label_map_figure, prior_figure

        f = self.features
        step = int(self.step_counter)
        experiment.add_figure(
            "test/label_map",
            label_map_figure(terms["label_map"], f.source_class_names, f.target_class_names),
            step,
        )
        experiment.add_figure("test/prior", prior_figure(terms["prior"], f.source_class_names), step)
        experiment.add_figure("test/bound_decomposition", bound_decomposition_figure(self.result), step)
