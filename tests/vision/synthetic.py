"""Small synthetic cases for the vision tests: an ellipsoid target inside a noisy blob image."""
from __future__ import annotations

import numpy as np
import torch


def ellipsoid_case(shape=(48, 48, 48), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (1, 1, *shape) in [0, 1] and 0/1 target of the same shape.

    The ellipsoid is brighter than its surroundings but the background holds smooth blobs of
    similar brightness and voxel noise, so the network must use shape, not a threshold.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    center = np.array([0.1, -0.15, 0.05])[:, None, None, None]
    radii = np.array([0.45, 0.3, 0.35])[:, None, None, None]
    target = (((grid - center) / radii) ** 2).sum(0) <= 1.0
    image = np.zeros(shape, dtype=np.float64)
    for _ in range(6):  # distracting blobs
        c = rng.uniform(-0.9, 0.9, size=3)[:, None, None, None]
        r = rng.uniform(0.1, 0.25)
        image += 0.5 * np.exp(-(((grid - c) ** 2).sum(0)) / (2 * r**2))
    image += 0.6 * target + rng.normal(0, 0.08, size=shape)
    image = (image - image.min()) / (image.max() - image.min())
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return as_t(image), as_t(target)


def small_cube_case(generator: torch.Generator, n: int = 40, half: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A (2*half)^3 bright cube at a random place in an n^3 noise image: ~0.1 % foreground, like a lesion."""
    image = torch.rand(1, 1, n, n, n, generator=generator) * 0.3
    target = torch.zeros_like(image)
    center = torch.randint(half + 2, n - half - 2, (3,), generator=generator)
    where = (0, 0, *(slice(int(c) - half, int(c) + half) for c in center))
    image[where] += 0.6
    target[where] = 1.0
    return image, target
