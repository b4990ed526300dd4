"""Every Lightning class of tta: thin glue around the maths (tta.bound, tta.heads, tta.fitting...).

- :class:`TaskTransferAnalysis`: the analysis LightningModule (wires the :mod:`tta.fitting` engine's
  phases, logs, checkpoints); :class:`LinearProbe`, :class:`ProbeMetrics`: the probe heads' module.
- :class:`TaskPairDataModule`: a (reference, target) task pair as standardised features
  (:class:`FeaturePair`), extracted once with a frozen backbone and cached.
- :class:`FeatureExtractor`, :class:`ShardWriter`, :func:`run_extraction`: the (multi-device) feature
  extraction pass behind :func:`tta.data.get_features`.
- :class:`SmallCNNClassifier`, :class:`TaskImageDataModule`: training the paper's small CNN backbone.
- :func:`bound_decomposition_figure`, :func:`label_map_figure`, :func:`prior_figure`: the figures logged
  to TensorBoard.
- :class:`InterruptCallback`: a clean stop on SIGINT/SIGTERM at a step boundary, resumable.

The implementation modules are private; import from here.
"""

from tta.data._pair import FeaturePair, check_features
from tta.modules._analysis import TaskTransferAnalysis
from tta.modules._backbone_training import SmallCNNClassifier, TaskImageDataModule
from tta.modules._checkpoint_io import AtomicCheckpointIO
from tta.modules._datamodule import TaskPairDataModule, extraction_trainer_kwargs
from tta.modules._extraction import (
    FeatureExtractor,
    PreprocessedChunks,
    ShardWriter,
    assemble_shards,
    run_extraction,
)
from tta.modules._figures import bound_decomposition_figure, label_map_figure, prior_figure
from tta.modules._interrupt import InterruptCallback
from tta.modules._probe import LinearProbe, ProbeMetrics

__all__ = [
    "AtomicCheckpointIO",
    "FeatureExtractor",
    "FeaturePair",
    "InterruptCallback",
    "LinearProbe",
    "PreprocessedChunks",
    "ProbeMetrics",
    "ShardWriter",
    "SmallCNNClassifier",
    "TaskImageDataModule",
    "TaskPairDataModule",
    "TaskTransferAnalysis",
    "assemble_shards",
    "bound_decomposition_figure",
    "check_features",
    "extraction_trainer_kwargs",
    "label_map_figure",
    "prior_figure",
    "run_extraction",
]
