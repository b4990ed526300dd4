"""Domain shifts of uint8 images, for transferability studies (pure tensor functions).

Every function takes uint8 images ``(N, H, W)`` (grayscale) or ``(N, H, W, C)`` and returns uint8 images of
the same shape, rounding and clipping to 0..255. A task applies them, in the order listed, to both of its
splits after selecting classes and samples (:class:`tta.data.TaskSpec` ``shifts``)::

    shifts:
      - {name: rotation, degrees: 30}
      - {name: noise, std: 20}

==============  ===========  ==========================================================================
name            parameters   effect
==============  ===========  ==========================================================================
``rotation``    ``degrees``  rotate counter-clockwise about the image centre (bilinear, corners 0);
                             multiples of 90° are exact (:func:`torch.rot90`)
``inversion``   (none)       ``255 - x``
``noise``       ``std``      add Gaussian noise of standard deviation ``std`` grey levels; the noise of
                             a sample depends only on the task's seed, its split and its index in the
                             dataset split (not on the other samples kept)
``blur``        ``sigma``    Gaussian blur, separable kernel of radius ``ceil(3·sigma)``, reflected
                             edges
``resolution``  ``size``     downsample (antialiased) so the shorter side is ``size``, then upsample
                             back (bilinear): same shape, less detail
==============  ===========  ==========================================================================
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tta.errors import TTAInputError

__all__ = [
    "SHIFTS",
    "apply_shifts",
    "gaussian_blur",
    "gaussian_noise",
    "inversion",
    "resolution",
    "rotation",
    "sample_seeds",
    "validate_shifts",
]


def _check(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim not in (3, 4):
        raise ValueError(
            "shifts apply to uint8 images (N, H, W) or (N, H, W, C), "
            f"got {images.dtype} {tuple(images.shape)}"
        )


def _to_nchw(images: Tensor) -> Tensor:
    x = images.unsqueeze(-1) if images.ndim == 3 else images
    return x.permute(0, 3, 1, 2).to(torch.float32)


def _from_nchw(x: Tensor, like: Tensor) -> Tensor:
    out = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out.squeeze(-1) if like.ndim == 3 else out.contiguous()


def rotation(images: Tensor, degrees: float) -> Tensor:
    """Rotate counter-clockwise by ``degrees`` about the centre; uncovered corners become 0.

    Multiples of 90° use :func:`torch.rot90` (exact; needs square images unless the multiple of 180°).
    Other angles: bilinear sampling of an affine grid (``align_corners=False``), same shape.

    Args:
        images: uint8 ``(N, H, W[, C])``.
        degrees: Angle, counter-clockwise.

    Returns:
        uint8 images of the same shape.
    """
    _check(images)
    quarter = float(degrees) / 90.0
    if quarter == round(quarter):
        k = round(quarter) % 4
        if k % 2 == 1 and images.shape[1] != images.shape[2]:
            raise ValueError(f"rotation by {degrees}° needs square images, got {tuple(images.shape[1:3])}")
        return torch.rot90(images, k, dims=(1, 2)).contiguous()
    x = _to_nchw(images)
    n, _, h, w = x.shape
    theta = math.radians(float(degrees))
    cos, sin = math.cos(theta), math.sin(theta)
    # grid coordinates are normalised to [-1, 1] per axis: undo the aspect ratio around the rotation
    # output pixel (u, v) samples input at R(-theta) (u, v) in pixel units, y axis pointing down
    mat = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(mat.expand(n, 2, 3), [n, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _from_nchw(out, images)


def inversion(images: Tensor) -> Tensor:
    """``255 - x`` (an involution).

    Args:
        images: uint8 ``(N, H, W[, C])``.

    Returns:
        uint8 images of the same shape.
    """
    _check(images)
    return 255 - images


def sample_seeds(seed: int, purpose: str, sample_ids: Tensor | Sequence[int]) -> list[int]:
    """One 63-bit seed per sample, from ``(seed, purpose, sample id)`` (SHA-256; stable across versions)."""
    out = []
    for i in torch.as_tensor(sample_ids).reshape(-1).tolist():
        digest = hashlib.sha256(f"tta/shift/{seed}/{purpose}/{int(i)}".encode()).digest()
        out.append(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return out


def gaussian_noise(images: Tensor, std: float, seeds: Sequence[int]) -> Tensor:
    """Add i.i.d. Gaussian noise of standard deviation ``std`` (grey levels), rounded and clipped to 0..255.

    Sample ``i`` draws its noise from a generator seeded with ``seeds[i]``, so it does not depend on the
    other samples of the batch.

    Args:
        images: uint8 ``(N, H, W[, C])``.
        std: Standard deviation, in grey levels (0..255 scale), ``>= 0``.
        seeds: ``N`` integer seeds (see :func:`sample_seeds`).

    Returns:
        uint8 images of the same shape.
    """
    _check(images)
    if std < 0:
        raise ValueError(f"noise: std must be >= 0, got {std}")
    if len(seeds) != images.shape[0]:
        raise ValueError(f"noise: {len(seeds)} seeds for {images.shape[0]} images")
    shape = tuple(images.shape[1:])
    gen = torch.Generator()
    noise = torch.empty(images.shape, dtype=torch.float32)
    for i, s in enumerate(seeds):
        gen.manual_seed(int(s))
        noise[i] = torch.randn(shape, generator=gen)
    return (images.to(torch.float32) + float(std) * noise).round().clamp(0, 255).to(torch.uint8)


def gaussian_kernel(sigma: float, radius: int) -> Tensor:
    """Normalised 1-d Gaussian weights on ``-radius..radius`` (sum 1)."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of standard deviation ``sigma`` pixels, reflected edges.

    The kernel has radius ``ceil(3·sigma)`` (clipped to the image size minus one) and sums to 1, so a
    constant image is unchanged and the mean is preserved up to edge effects.

    Args:
        images: uint8 ``(N, H, W[, C])``.
        sigma: Standard deviation in pixels, ``> 0``.

    Returns:
        uint8 images of the same shape.
    """
    _check(images)
    if sigma <= 0:
        raise ValueError(f"blur: sigma must be > 0, got {sigma}")
    x = _to_nchw(images)
    n, c, h, w = x.shape
    radius = math.ceil(3.0 * float(sigma))
    out = x.reshape(n * c, 1, h, w)
    for axis, size in ((2, h), (3, w)):
        r = min(radius, size - 1)
        if r < 1:
            continue
        k = gaussian_kernel(float(sigma), r)
        if axis == 2:
            out = F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
        else:
            out = F.conv2d(F.pad(out, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return _from_nchw(out.reshape(n, c, h, w), images)


def resolution(images: Tensor, size: int) -> Tensor:
    """Lose resolution: downsample, then upsample back to the original size.

    Downsampling (bilinear, antialiased) makes the shorter side ``size``; upsampling (bilinear) restores
    ``H × W``. ``size >= min(H, W)`` leaves the images unchanged.

    Args:
        images: uint8 ``(N, H, W[, C])``.
        size: Shorter side of the intermediate images, in pixels, ``>= 1``.

    Returns:
        uint8 images of the same shape.
    """
    _check(images)
    if int(size) < 1:
        raise ValueError(f"resolution: size must be a positive integer, got {size}")
    h, w = int(images.shape[1]), int(images.shape[2])
    if size >= min(h, w):
        return images.clone()
    scale = int(size) / min(h, w)
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = _to_nchw(images)
    down = F.interpolate(x, size=small, mode="bilinear", antialias=True, align_corners=False)
    up = F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)
    return _from_nchw(up, images)


#: Shift name -> (function, required parameters).
SHIFTS: dict[str, tuple[Callable[..., Tensor], tuple[str, ...]]] = {
    "rotation": (rotation, ("degrees",)),
    "inversion": (inversion, ()),
    "noise": (gaussian_noise, ("std",)),
    "blur": (gaussian_blur, ("sigma",)),
    "resolution": (resolution, ("size",)),
}


def validate_shifts(shifts: Sequence[Mapping[str, Any]] | None) -> None:
    """Check a ``shifts`` list: known names, exactly the parameters each needs, numbers in range.

    Raises:
        tta.errors.TTAInputError: (a ``ValueError``) Naming the offending entry and what it should look like.
    """
    for i, entry in enumerate(shifts or ()):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise TTAInputError(
                f"shifts[{i}] must be a mapping with a `name`, e.g. {{name: rotation, degrees: 30}}"
            )
        name = entry["name"]
        if name not in SHIFTS:
            raise TTAInputError(f"shifts[{i}]: unknown shift {name!r}; known: {', '.join(SHIFTS)}")
        params = set(entry) - {"name"}
        needed = set(SHIFTS[name][1])
        if params != needed:
            want = ", ".join(f"{p}: <number>" for p in SHIFTS[name][1])
            raise TTAInputError(
                f"shifts[{i}] ({name}) takes parameters {sorted(needed) or 'none'}, got {sorted(params)}; "
                f"write {{name: {name}{', ' + want if want else ''}}}"
            )
        for p in needed:
            value = entry[p]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TTAInputError(f"shifts[{i}] ({name}): {p} must be a number, got {value!r}")
        if name == "noise" and entry["std"] < 0:
            raise TTAInputError(f"shifts[{i}] (noise): std must be >= 0, got {entry['std']}")
        if name == "blur" and entry["sigma"] <= 0:
            raise TTAInputError(f"shifts[{i}] (blur): sigma must be > 0, got {entry['sigma']}")
        if name == "resolution" and (entry["size"] < 1 or entry["size"] != int(entry["size"])):
            raise TTAInputError(
                f"shifts[{i}] (resolution): size must be a positive integer, got {entry['size']}"
            )


def apply_shifts(
    images: Tensor,
    shifts: Sequence[Mapping[str, Any]] | None,
    seed: int = 0,
    split: str = "",
    sample_ids: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Apply ``shifts`` in order (see the module docstring for the names and parameters).

    Args:
        images: uint8 ``(N, H, W[, C])``.
        shifts: e.g. ``[{"name": "rotation", "degrees": 30}, {"name": "noise", "std": 20}]``.
        seed: Seed of the random shifts (noise).
        split: Part of the noise seed, so that train and test draw different noise.
        sample_ids: A stable id per image (its index in the dataset split); default ``0..N-1``.

    Returns:
        uint8 images of the same shape.
    """
    validate_shifts(shifts)
    ids = torch.arange(images.shape[0]) if sample_ids is None else torch.as_tensor(sample_ids)
    out = images
    for i, entry in enumerate(shifts or ()):
        fn, params = SHIFTS[entry["name"]]
        kwargs = {p: entry[p] for p in params}
        if entry["name"] == "noise":
            kwargs["seeds"] = sample_seeds(seed, f"{split}/{i}/noise", ids)
        out = fn(out, **kwargs)
    return out
