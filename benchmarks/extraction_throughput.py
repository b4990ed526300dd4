"""Throughput of tta's feature extraction against a bare timm forward pass over the same images.

tta's path is :func:`tta.data.extract_features`: a Lightning ``trainer.predict`` pass whose DataLoader
preprocesses each batch (``ImagePreprocess.batch`` on the uint8 images), with the writer that assembles
the rows by index. The bare path is a plain loop over the same batches: the same preprocessing call on
the same uint8 slices, then the timm model built by the same backbone (``backbone.model``, classifier
removed, channels-last as the backbone runs it) under ``torch.inference_mode``. Both include the
preprocessing; the bare loop has no Trainer, no DataLoader, no progress bar and no assembly. Runs are
interleaved (tta, bare, tta, bare, ...) after a warm-up of each, so a load change on a shared machine hits
both; the best of the repeats is compared.

Usage::

    python benchmarks/extraction_throughput.py --n 1000 --image-size 112 --batch-size 64

Target: ratio (tta / bare) <= 1.15.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import torch


def main() -> None:
    """Run the benchmark and print the timings and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="number of Fashion-MNIST training images")
    parser.add_argument("--image-size", type=int, default=112, help="network input side")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path (interleaved)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--progress", action="store_true", help="show Lightning's progress bar in tta's runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("tta").setLevel(logging.WARNING)

    from tta.backbones import EfficientNetLite0
    from tta.data import extract_features, fashion_mnist

    dataset = fashion_mnist("train").subset(range(args.n))
    backbone = EfficientNetLite0(image_size=args.image_size)
    model, pre, bs = backbone.model, backbone.preprocess(), args.batch_size
    images = dataset.images

    def tta_pass() -> torch.Tensor:
        return extract_features(backbone, dataset, batch_size=bs, progress=args.progress, accelerator="cpu")

    def bare_pass() -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], bs):
                x = pre.batch(images[start : start + bs])
                out.append(model(x.contiguous(memory_format=torch.channels_last)))
        return torch.cat(out)

    # warm-up (first-call allocations, oneDNN primitive caches), and a check that both compute the same
    a, b = tta_pass(), bare_pass()
    max_diff = float((a - b).abs().max())
    times: dict[str, list[float]] = {"tta": [], "bare": []}
    for _ in range(args.repeats):
        for name, fn in (("tta", tta_pass), ("bare", bare_pass)):
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)

    best = {k: min(v) for k, v in times.items()}
    load = os.getloadavg()
    print(
        f"extraction throughput: {args.n} fashion_mnist images, EfficientNet-Lite0 at {args.image_size}px, "
        f"batch {bs}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"load average {load[0]:.1f}/{load[1]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"  outputs agree to {max_diff:.1e} (max abs difference)")
    for name, label in (("tta", "tta extract_features (predict pass)"), ("bare", "bare timm forward loop")):
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(
            f"  {label:<36} best {best[name]:6.2f} s  median {statistics.median(times[name]):6.2f} s  "
            f"({args.n / best[name]:7.1f} img/s; runs: {runs})"
        )
    ratio = best["tta"] / best["bare"]
    print(f"  ratio tta / bare: {ratio:.3f}  (target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})")


if __name__ == "__main__":
    main()
