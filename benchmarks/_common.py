"""Shared helpers of the benchmark scripts: the demo features, synthetic tasks, timing, memory."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

Split = tuple[Tensor, Tensor]


@dataclass
class TaskPair:
    """Standardised reference/target features and labels, with a description of where they come from."""

    source_train: Split
    source_test: Split
    target_train: Split
    target_test: Split
    k_s: int
    k_t: int
    description: str


def machine() -> str:
    """One line describing this machine (CPU count, RAM, torch, load average)."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):  # pragma: no cover
        mem = float("nan")
    load = os.getloadavg()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (
        f"{platform.machine()} {os.cpu_count()} cores, {mem:.0f} GiB RAM, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {cuda}, load avg {load[0]:.1f}/{load[1]:.1f}"
    )


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    # as tta.modules._datamodule.standardise (not imported: it pulls in Lightning, ~2 s)
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return (train - mean) / std, (test - mean) / std


def demo_features(cache_dir: str | None = None, image_size: int = 112) -> TaskPair:
    """The demo pair (configs/demo.yaml): Fashion-MNIST (200/100 per class) → MNIST-5k, EfficientNet-Lite0.

    Features come from the feature cache (``~/.cache/tta/features`` or ``$TTA_CACHE_DIR``); on a miss
    they are extracted (a few minutes on 2 CPU cores) and stored — the script says which happened.
    """
    from tta.backbones import EfficientNetLite0
    from tta.data import FeatureCache, TaskSpec, get_features

    cache = FeatureCache(cache_dir) if cache_dir else FeatureCache()
    backbone = EfficientNetLite0(image_size=image_size).eval()
    ref = TaskSpec("fashion_mnist", train_per_class=200, test_per_class=100, seed=0)
    tgt = TaskSpec("mnist_5k", test_fraction=0.2, seed=0)
    raw: dict[str, Split] = {}
    hits = []
    started = time.perf_counter()
    for role, spec in (("source", ref), ("target", tgt)):
        for split in ("train", "test"):
            out = get_features(backbone, spec, split, cache=cache, batch_size=64, progress=False)
            raw[f"{role}_{split}"] = (out.features, out.labels)
            hits.append(bool(out.cache_hit))
    how = "read from the feature cache" if all(hits) else "extracted now (cache miss) and cached"
    print(
        f"features: EfficientNet-Lite0 @ {image_size}px, {how} in {time.perf_counter() - started:.1f} s "
        f"({cache.root})",
        file=sys.stderr,
    )
    s_tr, s_te = _standardise(raw["source_train"][0], raw["source_test"][0])
    t_tr, t_te = _standardise(raw["target_train"][0], raw["target_test"][0])
    return TaskPair(
        (s_tr, raw["source_train"][1]),
        (s_te, raw["source_test"][1]),
        (t_tr, raw["target_train"][1]),
        (t_te, raw["target_test"][1]),
        10,
        10,
        f"EfficientNet-Lite0 features d=1280, fashion_mnist→mnist_5k ({how})",
    )


def project(pair: TaskPair, dim: int, seed: int = 0) -> TaskPair:
    """A seeded Gaussian random projection of ``pair`` to ``dim`` features (then re-standardised)."""
    d = pair.source_train[0].shape[1]
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(d, dim, generator=g) / dim**0.5

    def both(tr: Split, te: Split) -> tuple[Split, Split]:
        a, b = _standardise(tr[0] @ proj, te[0] @ proj)
        return (a, tr[1]), (b, te[1])

    s_tr, s_te = both(pair.source_train, pair.source_test)
    t_tr, t_te = both(pair.target_train, pair.target_test)
    desc = pair.description.replace("d=1280", f"d=1280 → seeded random projection to d={dim}")
    return TaskPair(s_tr, s_te, t_tr, t_te, pair.k_s, pair.k_t, desc)


def gaussian_task(
    k: int, dim: int, train_per_class: int, test_per_class: int, seed: int, spread: float = 1.0
) -> tuple[Split, Split, Tensor]:
    """A synthetic task: ``k`` Gaussian class clusters in ``dim`` dimensions (unit noise).

    Returns the train and test splits and the class means.
    """
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(k, dim, generator=g)

    def draw(per: int) -> Split:
        y = torch.arange(k).repeat_interleave(per)
        return means[y] + torch.randn(k * per, dim, generator=g), y

    return draw(train_per_class), draw(test_per_class), means


def synthetic_pair(
    k: int, dim: int, train_per_class: int, test_per_class: int, seed: int = 0, k_t: int | None = None
) -> TaskPair:
    """Synthetic reference/target pair: Gaussian class clusters; the target's clusters are a seeded
    perturbation of the reference's (random rotation-free shift), standardised per task."""
    k_t = k if k_t is None else k_t
    s_tr, s_te, means = gaussian_task(k, dim, train_per_class, test_per_class, seed, spread=1.5)
    g = torch.Generator().manual_seed(seed + 1)
    t_means = means[torch.randperm(k, generator=g)[:k_t]] + 0.5 * torch.randn(k_t, dim, generator=g)
    per_t_train = max(1, train_per_class * k // k_t)
    per_t_test = max(1, test_per_class * k // k_t)

    def draw(per: int) -> Split:
        y = torch.arange(k_t).repeat_interleave(per)
        return t_means[y] + torch.randn(k_t * per, dim, generator=g), y

    t_tr, t_te = draw(per_t_train), draw(per_t_test)
    a, b = _standardise(s_tr[0], s_te[0])
    c, d = _standardise(t_tr[0], t_te[0])
    return TaskPair(
        (a, s_tr[1]),
        (b, s_te[1]),
        (c, t_tr[1]),
        (d, t_te[1]),
        k,
        k_t,
        f"synthetic Gaussian class clusters, K_S={k}, K_T={k_t}, d={dim}, seed={seed}",
    )


def train_head(pair: TaskPair, steps: int = 300, seed: int = 0) -> Any:
    """The reference classifier h_S (τ = 0.02, w_gp = 1e4, as the demo config)."""
    from tta.heads import HeadConfig, fit_linear_head

    cfg = HeadConfig(tau=0.02, w_gp=1e4, steps=steps, batch_size=512, lr=0.01)
    head = fit_linear_head(pair.source_train[0], pair.source_train[1], pair.k_s, cfg, seed=seed)
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def to_device(pair: TaskPair, device: str) -> TaskPair:
    """``pair`` with every tensor on ``device``."""
    if device == "cpu":
        return pair

    def mv(s: Split) -> Split:
        return s[0].to(device), s[1].to(device)

    return TaskPair(
        mv(pair.source_train),
        mv(pair.source_test),
        mv(pair.target_train),
        mv(pair.target_test),
        pair.k_s,
        pair.k_t,
        pair.description + f" [{device}]",
    )
