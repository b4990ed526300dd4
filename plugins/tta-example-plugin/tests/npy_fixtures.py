"""A generator of tiny ``class_name/*.npy`` folders for the tests (also usable from a shell)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_npy_folder(
    root: str | Path,
    counts: dict[str, int],
    shape: tuple[int, ...] = (16, 16, 3),
    seed: int = 0,
) -> Path:
    """Write ``counts[c]`` random uint8 images of ``shape`` into ``root/c/0000.npy``... for each class.

    Each class has its own mean brightness, so that classes are separable.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for k, (cls, n) in enumerate(counts.items()):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            centre = 40 + 50 * k
            img = np.clip(rng.normal(centre, 20, size=shape), 0, 255).astype(np.uint8)
            np.save(folder / f"{i:04d}.npy", img)
    return root
