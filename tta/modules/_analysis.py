"""``TaskTransferAnalysis``: the frozen backbone plus the learnable transform head, as a LightningModule.

Glue only: the heads, the transform and every loop live in :class:`tta.fitting.Analysis` (the torch
side, as anomalib splits ``torch_model`` from ``lightning_model``). One ``fit`` runs the analysis' four
phases, one optimiser step per training step (:meth:`tta.fitting.Analysis.step`), so that the progress
bar, logging and checkpoints cover them all; ``test`` evaluates the bound and every classifier on the
test splits. The backbone is handed to the data module once, in :meth:`TaskTransferAnalysis.setup`,
which returns the features: the data module never reaches back into the model.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, replace
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from tta.backbones import Backbone, create_backbone
from tta.distances import DistanceEstimator, create_distance
from tta.errors import TTAInputError
from tta.fitting import PHASES, Analysis, AnalysisSettings, EvalConfig, EvalTransform, TransformConfig
from tta.heads import HeadConfig, LinearHead
from tta.results import AnalysisResult
from tta.transforms import TaskTransform

__all__ = ["PHASES", "TaskTransferAnalysis"]


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
        defaults = AnalysisSettings()
        try:
            self.settings = AnalysisSettings(
                source_head=source_head or defaults.source_head,
                probe=probe or defaults.probe,
                standard_probe=standard_probe or defaults.standard_probe,
                transform=transform or defaults.transform,
                evaluation=evaluation or defaults.evaluation,
                distance=_spec_name(distance) or "auto",
                eval_distance=_spec_name(eval_distance) or "auto",
            )
        except TTAInputError as err:  # name the option as the config and the command line spell it
            raise TTAInputError(f"model.{err}") from None
        # plain dicts only, so that checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {
                "backbone": _spec_name(backbone),
                "source_head": asdict(self.settings.source_head),
                "probe": asdict(self.settings.probe),
                "standard_probe": asdict(self.settings.standard_probe),
                "transform": asdict(self.settings.transform),
                "evaluation": asdict(self.settings.evaluation),
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
        self.analysis: Analysis | None = None
        self.features: Any = None
        self.test_metrics: nn.ModuleDict | None = None
        self.result: AnalysisResult | None = None
        self._eval: EvalTransform | None = None
        self._test_started = 0.0

    # ---------------------------------------------------------------- structure
    @property
    def source_head_config(self) -> HeadConfig:
        """Training of :math:`h_S`."""
        return self.settings.source_head

    @property
    def transform_config(self) -> TransformConfig:
        """How the transform is learned."""
        return self.settings.transform

    @property
    def eval_config(self) -> EvalConfig:
        """How the bound is evaluated."""
        return self.settings.evaluation

    @property
    def phase_steps(self) -> dict[str, int]:
        """Number of training steps of each phase."""
        return self.settings.phase_steps()

    @property
    def total_steps(self) -> int:
        """All training steps of a fit."""
        return sum(self.phase_steps.values())

    def phase_of(self, step: int) -> tuple[str, int]:
        """The phase that global step ``step`` belongs to, and the step within it."""
        for name, n in self.phase_steps.items():
            if step < n:
                return name, step
            step -= n
        return "done", step

    @property
    def source_head(self) -> LinearHead | None:
        """:math:`h_S` (``None`` before ``setup``)."""
        return None if self.analysis is None else self.analysis.source_head

    @property
    def probe(self) -> LinearHead | None:
        """The τ-penalised target probe."""
        return None if self.analysis is None else self.analysis.probe

    @property
    def standard_probe(self) -> LinearHead | None:
        """The standard target probe."""
        return None if self.analysis is None else self.analysis.standard_probe

    @property
    def transform(self) -> TaskTransform | None:
        """The transform (D, B, A, Ā, b)."""
        return None if self.analysis is None else self.analysis.transform

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per phase so far, and where the transform phase stopped."""
        return {} if self.analysis is None else self.analysis.fit_timings()

    @property
    def ill_conditioned_at(self) -> int:
        """The transform step after which cond(A) exceeded ``transform.max_condition`` (``-1``: none)."""
        stopped = None if self.analysis is None else self.analysis.transform_phase.guard.stopped_at
        return -1 if stopped is None else int(stopped)

    def setup(self, stage: str) -> None:
        ddp_kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", None)
        if isinstance(ddp_kwargs, dict):  # each phase updates only its own parameters
            ddp_kwargs.setdefault("find_unused_parameters", True)
        if self.analysis is not None:
            return
        datamodule = self.trainer.datamodule
        self.features = datamodule.features_for(self.backbone)  # the one hand-off: backbone in, features out
        datamodule.train_steps = self.total_steps
        self.analysis = Analysis.for_features(
            self.features, self.settings, self.seed, distance=self.distance, eval_distance=self.eval_distance
        )
        self.test_metrics = self.analysis.new_metrics()
        if stage == "fit":
            self.analysis.initialise(self.features)
        self.analysis.start(self.features)  # the phases; their data follows the model to its device

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        assert self.analysis is not None
        return list(self.analysis.optimizers().values())  # owned by the phases (tta.fitting)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.analysis is not None:  # the optimisers' states are in the checkpoint already
            checkpoint["tta_engine"] = self.analysis.engine_state(optimizers=False)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("backbone.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("tta_engine")
        if saved is not None and self.analysis is not None:
            self.analysis.load_engine_state(saved)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        assert self.analysis is not None
        wrappers = self.optimizers()
        wrappers = wrappers if isinstance(wrappers, list) else [wrappers]
        optimizers = dict(zip(self.analysis.optimizers(), wrappers))  # Lightning's, which count the steps
        phase, record = self.analysis.step(int(self.step_counter), self.manual_backward, optimizers)
        if record is not None:
            values = {
                f"train/{phase}_{k}" if phase != "transform" else f"train/{k}": v for k, v in record.items()
            }
            force = phase == "transform" and ("cond_A" in record or "selection_bound" in record)
            self._log_step(values, force=force)
        self.step_counter += 1

    def on_train_end(self) -> None:
        if self.analysis is not None:
            self.analysis.finish_phases(self.total_steps)

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

    # ---------------------------------------------------------------- evaluation
    def on_test_epoch_start(self) -> None:
        self._test_started = time.perf_counter()
        analysis = self.analysis
        assert analysis is not None and self.test_metrics is not None
        if int(self.step_counter) == 0 and self.total_steps > 0:
            raise TTAInputError(
                f"nothing is fitted: this model has run 0 of its {self.total_steps} training steps, so its "
                "heads and transform are untrained; run `tta fit`, or give `tta test` the checkpoint of a "
                "fit (--ckpt_path)"
            )
        for metric in self.test_metrics.values():
            metric.reset()
        self._eval = analysis.prepare_evaluation(self.features.target_test[1].to(self.device))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        assert self.analysis is not None and self._eval is not None and self.test_metrics is not None
        idx = batch[0] if isinstance(batch, (list, tuple)) else batch
        z_all, y_all = self.features.target_test
        z, y = z_all[idx].to(self.device), y_all[idx].to(self.device)
        for name, log_probs in self.analysis.target_log_probs(self._eval, z).items():
            self.test_metrics[name].update(log_probs, y)

    def on_test_epoch_end(self) -> None:
        assert self.analysis is not None and self.test_metrics is not None
        result = self.analysis.result(self.features, self.test_metrics, self._test_started)
        done, total = int(self.step_counter), self.total_steps
        if done < total:  # e.g. --trainer.max_steps: the later phases never trained
            phase, _ = self.phase_of(done)
            message = (
                f"incomplete fit: {done} of {total} training steps ran (stopped in the {phase} phase, e.g. "
                "by --trainer.max_steps); the phases from there on are untrained, so this bound does not "
                "describe the analysis"
            )
            warnings.warn(message, UserWarning, stacklevel=2)
            result = replace(result, warnings=(*result.warnings, message))
        self.result = result
        report = result.report
        log = {
            "test/bound": report.bound,
            "test/weighted_source_loss": report.weighted_source_loss,
            "test/conditional_entropy": report.conditional_entropy,
            "test/tau": report.tau,
            "test/w1": report.w1,
            "test/tau_w1": report.tau_w1,
            "test/transport": report.transport,
            "test/trivial_level": report.trivial_level,
            "test/bound_certified": report.bound_certified,
            "test/gap": result.gap,
            "test/cond_A": report.cond_A,
        }
        for name, metrics in (
            ("transformed", result.transformed_classifier),
            ("probe", result.probe),
            ("standard_probe", result.standard_probe),
        ):
            log.update({f"test/{name}_ce": metrics.target_ce, f"test/{name}_acc": metrics.target_acc})
            log[f"test/{name}_ece"] = metrics.target_ece
        # a term a variant does not have (the logit bound has no tau or W1) is left out, not logged as None
        self.log_dict({k: v for k, v in log.items() if v is not None})
        self._log_figures(result)

    def _log_figures(self, result: AnalysisResult) -> None:
        logger = self.logger
        experiment = getattr(logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_figure") or self.global_rank != 0:
            return
        from tta.modules._figures import bound_decomposition_figure, label_map_figure, prior_figure

        f = self.features
        step = int(self.step_counter)
        report = result.report
        experiment.add_figure(
            "test/label_map",
            label_map_figure(report.label_map, f.source_class_names, f.target_class_names),
            step,
        )
        experiment.add_figure("test/prior", prior_figure(report.prior, f.source_class_names), step)
        experiment.add_figure("test/bound_decomposition", bound_decomposition_figure(result), step)
