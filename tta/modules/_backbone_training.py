"""Training a backbone on a reference task: the small CNN of the paper's small-scale experiments.

:class:`SmallCNNClassifier` trains :class:`tta.backbones.SmallCNNNet` (two conv layers + 200-d dense +
classifier) with cross-entropy on one task, served by :class:`TaskImageDataModule`, and at the end of
``fit`` writes the network as a ``.safetensors`` file (``weights_path``) that the frozen backbone
``small_cnn`` (:class:`tta.backbones.SmallCNN`) loads::

    tta fit --config configs/small_cnn/train_mnist5k.yaml     # writes weights/small_cnn_mnist5k.safetensors

    model:
      backbone:
        class_path: tta.backbones.SmallCNN
        init_args: {weights_path: weights/small_cnn_mnist5k.safetensors}

The data module yields raw uint8 images; the module preprocesses them on its device with the very
:class:`~tta.backbones.ImagePreprocess` the backbone uses (grayscale, ``image_size``, ``mean``/``std``,
stored in the weights file), so training and feature extraction see the same inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from tta.backbones._small_cnn import SmallCNNNet, save_small_cnn_weights, small_cnn_preprocess
from tta.data._tasks import TaskSpec, load_task

__all__ = ["SmallCNNClassifier", "TaskImageDataModule"]


def _image_tensor(dataset: Any, task: TaskSpec) -> Tensor:
    """The uint8 images of a split, or a clear error for a dataset of another kind (texts)."""
    images = getattr(dataset, "inputs", None)
    if images is None:
        images = getattr(dataset, "images", None)
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim not in (3, 4):
        raise ValueError(
            f"task {task.describe()}: the small CNN trains on images (a uint8 tensor (N, H, W) or "
            f"(N, H, W, C)), but this dataset's inputs are {type(images).__name__}; pick an image dataset"
        )
    return images


class TaskImageDataModule(pl.LightningDataModule):
    """The train and test splits of one image task, as raw uint8 image batches with labels.

    Validation and test both use the task's test split.

    Args:
        task: The task (``dataset``, ``classes``, caps, ``seed`` ...; see :class:`tta.data.TaskSpec`).
        batch_size: Training batch size.
        eval_batch_size: Batch size of the validation and test passes.
        num_workers: DataLoader worker processes.
        validate: Run a validation pass (on the test split) after each training epoch.
    """

    def __init__(
        self,
        task: TaskSpec,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        validate: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
        self.task = task if isinstance(task, TaskSpec) else TaskSpec(**dict(task))
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.validate = validate
        self.train_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None
        self.class_names: list[str] = []

    def prepare_data(self) -> None:
        load_task(self.task)  # downloads (when the dataset is configured to) once, on rank zero

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test = load_task(self.task)
        self.train_set = TensorDataset(_image_tensor(train, self.task), train.labels.long())
        self.test_set = TensorDataset(_image_tensor(test, self.task), test.labels.long())
        self.class_names = list(train.class_names)

    @property
    def num_classes(self) -> int:
        """Classes of the task (after :meth:`setup`)."""
        if self.train_set is None:
            self.setup()
        return len(self.class_names)

    def _loader(self, dataset: TensorDataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        assert dataset is not None, "call setup() first"
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[Any]:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False) if self.validate else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)


class SmallCNNClassifier(pl.LightningModule):
    """Train the small CNN (two conv layers + 200-d dense) on a reference task; write its weights file.

    Loss: cross-entropy. Logged: ``train/loss``, ``train/acc``, ``val/ce``, ``val/acc``, ``test/ce``,
    ``test/acc`` (torchmetrics, aggregated over batches and ranks).

    Args:
        num_classes: Classes of the task; default: taken from the data module (``num_classes``).
        image_size: Side of the square 1-channel network input (images are resized to it).
        mean: Normalisation mean on the [0, 1] scale.
        std: Normalisation standard deviation on the [0, 1] scale.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        weights_path: Where ``fit`` writes the trained network (``.safetensors``, with ``image_size``,
            ``mean``, ``std`` as metadata), for the ``small_cnn`` backbone; ``None`` writes nothing.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        image_size: int = 28,
        mean: float = 0.5,
        std: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        if weights_path is not None and Path(weights_path).suffix != ".safetensors":
            raise ValueError(f"weights_path must end in .safetensors, got {weights_path!r}")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.save_hyperparameters()
        self.preprocess = small_cnn_preprocess(image_size, mean, std)
        self.net: SmallCNNNet | None = None
        self.task_info: dict[str, Any] = {}
        if num_classes is not None:
            self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        self.net = SmallCNNNet(self.hparams.image_size, num_classes)
        self.hparams.num_classes = num_classes
        metric = torchmetrics.classification.MulticlassAccuracy
        self.train_acc = metric(num_classes=num_classes, average="micro")
        self.val_acc = metric(num_classes=num_classes, average="micro")
        self.test_acc = metric(num_classes=num_classes, average="micro")
        self.val_ce = torchmetrics.MeanMetric()
        self.test_ce = torchmetrics.MeanMetric()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        k = getattr(datamodule, "num_classes", None)
        if self.net is None:
            if k is None:
                raise ValueError(
                    "SmallCNNClassifier: num_classes is not set and the data module does not give it; set "
                    "model.num_classes (or use tta.modules.TaskImageDataModule)"
                )
            self._build(int(k))
        elif k is not None and int(k) != self.hparams.num_classes:
            raise ValueError(
                f"SmallCNNClassifier: num_classes={self.hparams.num_classes} but the task has {k} classes; "
                "set model.num_classes to match or leave it unset"
            )
        task = getattr(datamodule, "task", None)
        if task is not None:
            self.task_info = {"task": task.describe(), "class_names": getattr(datamodule, "class_names", [])}

    def _net(self) -> SmallCNNNet:
        if self.net is None:
            raise RuntimeError(
                "SmallCNNClassifier has no network yet: set num_classes or fit with a data module"
            )
        return self.net

    def forward(self, images: Tensor) -> Tensor:
        """Class logits of raw images.

        Args:
            images: uint8 ``(B, H, W)`` / ``(B, H, W, C)`` images (or already preprocessed floats
                ``(B, 1, s, s)``).

        Returns:
            ``(B, num_classes)`` logits.
        """
        return self._net()(self._inputs(images))

    def features(self, images: Tensor) -> Tensor:
        """The 200-d penultimate features of raw images (what the ``small_cnn`` backbone returns).

        Args:
            images: As for :meth:`forward`.

        Returns:
            ``(B, 200)`` features.
        """
        return self._net().features(self._inputs(images))

    def _inputs(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            return self.preprocess.batch(images)
        return images

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.shape[0])
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=False, batch_size=labels.shape[0])
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        acc, ce = (self.val_acc, self.val_ce) if stage == "val" else (self.test_acc, self.test_ce)
        acc.update(logits, labels)
        ce.update(torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
        self.log(f"{stage}/acc", acc, prog_bar=True, batch_size=labels.shape[0])
        self.log(f"{stage}/ce", ce, batch_size=labels.shape[0])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self._net().parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    def on_fit_end(self) -> None:
        if self.hparams.weights_path is not None and self.trainer.is_global_zero:
            path = self.export_weights(self.hparams.weights_path)
            rank_zero_info(f"small CNN weights written to {path}")

    def export_weights(self, path: str | Path) -> Path:
        """Write the network for the ``small_cnn`` backbone.

        Args:
            path: Destination ``.safetensors`` file.

        Returns:
            The written path.
        """
        return save_small_cnn_weights(
            self._net(), path, mean=self.hparams.mean, std=self.hparams.std, extra=self.task_info
        )
