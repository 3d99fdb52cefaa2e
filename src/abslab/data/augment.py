"""Geometric training augmentation for the VAEs (the co-author's code: docs/paper.md §3.2).

Two pipelines: `light_affine` (one joint zoom+shear, abslab's first approximation) and
`augmentor_pipeline`, batched torch versions of the four Augmentor (0.2.x) operations the
reimplementation applies: `p.zoom(0.1, 0.9, 1.1)`, `p.shear(0.1, 6, 6)`, `p.skew(0.1, 0.25)`,
`p.random_distortion(0.1, 3, 3, 1)`, in that order, each with its own probability per image.

The warps follow Augmentor's `Operations.py` geometry exactly (PIL's continuous pixel
coordinates: pixel j covers [j, j + 1), its centre is j + 0.5; every op maps output pixel
centres to input points; as PIL, a point inside the image interpolates with edge-clamped
neighbours and a point outside it is 0). Approximated: each op resamples once, bicubically
(torch's a = -0.75, PIL's -0.5), clamped to [0, 1]; PIL rounds to uint8 after every op, shears
with two resamplings (shear, then stretch) and antialiases a zoom out. Checked once against
Augmentor 0.2.12 with Pillow 13, same parameters, 40 MNIST test images: mean |difference| per
pixel 0.002-0.007 per op, against 0.02-0.16 between Augmentor's output and its input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

# The reimplementation's Augmentor arguments (docs/paper.md §3.2).
ZOOM_FACTORS = (0.9, 1.1)
MAX_SHEAR_DEGREES = (6, 6)  # left, right
SKEW_MAGNITUDE = 0.25
DISTORTION_GRID = (3, 3)  # width, height in cells
DISTORTION_MAGNITUDE = 1

# Augmentor's skew planes (`Skew.perform_operation`) as outward unit moves (dx, dy) of the
# corners TL, TR, BR, BL: four tilts, then the eight single-corner skews.
_SKEW_MOVES = torch.tensor(
    [
        [[0, -1], [0, 0], [0, 0], [0, 1]],  # tilt left: left edge grows
        [[0, 0], [0, -1], [0, 1], [0, 0]],  # tilt right
        [[-1, 0], [1, 0], [0, 0], [0, 0]],  # tilt forward: top edge grows
        [[0, 0], [0, 0], [1, 0], [-1, 0]],  # tilt backward
        [[-1, 0], [0, 0], [0, 0], [0, 0]],  # corner skews 0-7
        [[0, -1], [0, 0], [0, 0], [0, 0]],
        [[0, 0], [1, 0], [0, 0], [0, 0]],
        [[0, 0], [0, -1], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [1, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 1], [0, 0]],
        [[0, 0], [0, 0], [0, 0], [-1, 0]],
        [[0, 0], [0, 0], [0, 0], [0, 1]],
    ],
    dtype=torch.float64,
)


def light_affine(
    x: torch.Tensor,
    probability: float,
    zoom: float = 0.1,
    shear_degrees: float = 6.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zoom by 1 +- `zoom` and shear by +- `shear_degrees` each image with `probability`.

    x (N, 1, 28, 28) -> same shape. One random affine map standing in for the reimplementation's
    zoom, shear, skew and distortion (`augmentor_pipeline` applies those).
    """

    def warp(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n = len(images)
        scale = 1 + zoom * (2 * torch.rand(n, generator=generator) - 1)
        shear = math.tan(math.radians(shear_degrees)) * (2 * torch.rand(n, generator=generator) - 1)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = 1 / scale
        theta[:, 0, 1] = shear / scale
        theta[:, 1, 1] = 1 / scale
        grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, align_corners=False)

    return _on_some(x, probability, generator, warp)


def augmentor_pipeline(
    x: torch.Tensor, probability: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The reimplementation's Augmentor pipeline: zoom, shear, skew, distortion, each applied to
    each image independently with `probability` (Augmentor: `random.uniform(0, 1) < p`).

    x (N, C, H, W) in [0, 1] -> same shape, in [0, 1].
    """
    x = random_zoom(x, probability, *ZOOM_FACTORS, generator=generator)
    x = random_shear(x, probability, *MAX_SHEAR_DEGREES, generator=generator)
    x = random_skew(x, probability, SKEW_MAGNITUDE, generator=generator)
    return random_distortion(
        x, probability, *DISTORTION_GRID, DISTORTION_MAGNITUDE, generator=generator
    )


def random_zoom(
    x: torch.Tensor,
    probability: float,
    min_factor: float,
    max_factor: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augmentor's `Zoom`: factor `round(uniform(min_factor, max_factor), 2)`, then `zoom`."""

    def warp(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(len(images), generator=generator, dtype=torch.float64)
        return zoom(images, torch.round((min_factor + (max_factor - min_factor) * u) * 100) / 100)

    return _on_some(x, probability, generator, warp)


def random_shear(
    x: torch.Tensor,
    probability: float,
    max_shear_left: float,
    max_shear_right: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augmentor's `Shear`: `shear_angles`, along x or y with even odds, then `shear`."""

    def warp(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n = len(images)
        angle = shear_angles(n, max_shear_left, max_shear_right, generator)
        along_y = torch.rand(n, generator=generator) < 0.5
        return shear(images, angle, along_y)

    return _on_some(x, probability, generator, warp)


def random_skew(
    x: torch.Tensor,
    probability: float,
    magnitude: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augmentor's `skew` (skew_type RANDOM): `skew_corners` drawn, then `skew`."""

    def warp(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        height, width = images.shape[-2:]
        corners = skew_corners(len(images), height, width, magnitude, generator)
        return skew(images, corners)

    return _on_some(x, probability, generator, warp)


def random_distortion(
    x: torch.Tensor,
    probability: float,
    grid_width: int,
    grid_height: int,
    magnitude: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augmentor's `Distort`: every interior grid point moves by integers dx, dy drawn uniformly
    from -magnitude ... magnitude (Augmentor's `random.randint`), then `distort`."""

    def warp(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        size = (len(images), grid_height - 1, grid_width - 1, 2)
        shifts = torch.randint(-magnitude, magnitude + 1, size, generator=generator)
        return distort(images, shifts)

    return _on_some(x, probability, generator, warp)


def skew_corners(
    n: int, height: int, width: int, magnitude: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augmentor's random skew plane: (n, 4, 2) new (x, y) positions of the corners TL, TR, BR,
    BL of the [0, width] x [0, height] image.

    Matched: the amount is an integer from 1 to ceil(max(width, height) * magnitude) (7 for
    28 x 28 and 0.25); the skew type is one of TILT (a tilt of four), TILT_LEFT_RIGHT,
    TILT_TOP_BOTTOM (two each) or CORNER (one corner of eight along one axis), even odds; so each
    tilt has odds 3/16 and each corner skew 1/32. Every move is outward.
    """
    most = math.ceil(max(width, height) * magnitude)
    amount = torch.randint(1, most + 1, (n,), generator=generator)
    kind = torch.randint(0, 4, (n,), generator=generator)
    tilt = torch.randint(0, 4, (n,), generator=generator)
    half = torch.randint(0, 2, (n,), generator=generator)
    corner = torch.randint(0, 8, (n,), generator=generator)
    plane = torch.stack([tilt, half, 2 + half, 4 + corner])[kind, torch.arange(n)]
    return _corners(height, width) + _SKEW_MOVES[plane] * amount[:, None, None]


def shear_angles(
    n: int, max_left: float, max_right: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(n,) shear angles in degrees drawn as Augmentor's: `int(uniform(-left - 1, right + 1))`,
    plus 1 unless it is -1. For 6, 6: the integers -5 ... 7 without 0, where -1 and 1 are twice
    as likely as the others (Augmentor's quirk, kept)."""
    low, high = -abs(max_left) - 1, max_right + 1
    angle = torch.trunc(low + (high - low) * torch.rand(n, generator=generator))
    return torch.where(angle == -1, angle, angle + 1)


def zoom(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Augmentor's `Zoom` by `factor` (N,): resize to round(W * factor) x round(H * factor), then
    crop (or, below 1, pad with 0) the centre W x H box from floor(size / 2 - W / 2).

    x (N, C, H, W) -> same shape.
    """
    height, width = x.shape[-2:]
    shape = torch.tensor([width, height], dtype=torch.float64)
    size = torch.round(factor.cpu().double()[:, None] * shape)  # (N, 2)
    start = torch.floor(size / 2 - shape / 2)
    grid = _centres(x)
    return _sample(x, (grid + start[:, None, None]) * (shape / size)[:, None, None])


def shear(x: torch.Tensor, degrees: torch.Tensor, along_y: torch.Tensor) -> torch.Tensor:
    """Augmentor's `Shear` by `degrees` (N,), along y where `along_y` (N,) bool, else along x.

    Along x, with t = tan(degrees) and s = |ceil(t H)| (t > 0) or |floor(t H)|: PIL shears the
    image into a W + s wide one, crops columns s ... W and stretches those W - s columns back to W:
    x_in = x (W - s) / W + t y + (s if degrees <= 0 else 0). Along y likewise with r =
    round(|t W|) (PIL rounds the crop box) and the unrounded offset t W for degrees > 0:
    y_in = y (H - r) / H + t x + r - (t W if degrees > 0 else 0). x (N, C, H, W) -> same shape.
    """
    height, width = x.shape[-2:]
    degrees = degrees.cpu().double()
    positive = degrees > 0
    t = torch.tan(torch.deg2rad(degrees))[:, None, None]
    grid = _centres(x)
    u, v = grid[..., 0], grid[..., 1]
    s = torch.where(positive, torch.ceil(t[:, 0, 0] * height), torch.floor(t[:, 0, 0] * height))
    s = s.abs()[:, None, None]
    x_in = u * (width - s) / width + t * v + torch.where(positive[:, None, None], 0, s)
    r = torch.round((t * width).abs())
    offset = torch.where(positive[:, None, None], t * width, 0)
    y_in = v * (height - r) / height + t * u + r - offset
    sheared_x = torch.stack([x_in, v.expand_as(x_in)], -1)
    sheared_y = torch.stack([u.expand_as(y_in), y_in], -1)
    return _sample(x, torch.where(along_y.cpu()[:, None, None, None], sheared_y, sheared_x))


def skew(x: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Augmentor's `Skew`: the perspective map taking the image's corners TL, TR, BR, BL to
    `corners` (N, 4, 2) (x, y), output clipped to the same W x H (no crop or resize).

    x (N, C, H, W) -> same shape.
    """
    height, width = x.shape[-2:]
    square = _corners(height, width)
    new = corners.cpu().double()
    # PIL's PERSPECTIVE coefficients: x_in = (a x + b y + c) / (g x + h y + 1), y_in likewise
    # with d, e, f; solved from new corner -> old corner, as Augmentor (which uses a pinv).
    zeros, ones = torch.zeros_like(new[..., 0]), torch.ones_like(new[..., 0])
    px, py = new[..., 0], new[..., 1]
    qx, qy = square[:, 0].expand_as(px), square[:, 1].expand_as(py)
    rows_x = torch.stack([px, py, ones, zeros, zeros, zeros, -qx * px, -qx * py], -1)
    rows_y = torch.stack([zeros, zeros, zeros, px, py, ones, -qy * px, -qy * py], -1)
    a = torch.stack([rows_x, rows_y], 2).reshape(len(new), 8, 8)
    coef = torch.linalg.solve(a, square.reshape(8).expand(len(new), 8))
    coef = torch.cat([coef, torch.ones(len(new), 1, dtype=coef.dtype)], 1).reshape(-1, 3, 3)
    grid = _centres(x)
    homogeneous = torch.cat([grid[0], torch.ones_like(grid[0, ..., :1])], -1)  # (H, W, 3)
    mapped = torch.einsum("nij,hwj->nhwi", coef, homogeneous)
    return _sample(x, mapped[..., :2] / mapped[..., 2:])


def distort(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Augmentor's `Distort` with the interior grid points moved by `shifts` (N, gh - 1, gw - 1,
    2) (dx, dy in pixels) for a grid of gw x gh cells.

    Matched: cells floor(W / gw) wide, the last one taking the rest (9, 9, 10 for 28 and 3);
    PIL's MESH/QUAD transform samples each output cell from the quadrilateral of its moved
    corners, bilinearly in the cell, so the map is the piecewise-bilinear interpolation of the
    shifts, with the image's border points fixed. x (N, C, H, W) -> same shape.
    """
    height, width = x.shape[-2:]
    rows, cols = shifts.shape[1:3]
    # (N, 2, gh + 1, gw + 1): the shifts of all grid points, the border ones 0
    vertex_shifts = F.pad(shifts.cpu().double().permute(0, 3, 1, 2), (1, 1, 1, 1))
    grid = _centres(x)
    wy = _cell_weights(height, rows + 1)  # (H, gh + 1)
    wx = _cell_weights(width, cols + 1)  # (W, gw + 1)
    offsets = torch.einsum("iy,ncyx,jx->nijc", wy, vertex_shifts, wx)
    return _sample(x, grid + offsets)


def _corners(height: int, width: int) -> torch.Tensor:
    """(4, 2) float64 (x, y) of the corners TL, TR, BR, BL of the [0, width] x [0, height] image."""
    return torch.tensor([[0, 0], [width, 0], [width, height], [0, height]], dtype=torch.float64)


def _cell_weights(size: int, cells: int) -> torch.Tensor:
    """(size, cells + 1): the piecewise-linear weights of each pixel centre on the cell edges
    0, c, 2c, ..., size with c = floor(size / cells) (Augmentor's cells)."""
    step = size // cells
    edges = [k * step for k in range(cells)] + [size]
    centre = torch.arange(size, dtype=torch.float64) + 0.5
    cell = torch.clamp(torch.div(centre, step, rounding_mode="floor").long(), max=cells - 1)
    left = torch.tensor(edges, dtype=torch.float64)
    t = (centre - left[cell]) / (left[cell + 1] - left[cell])
    weights = torch.zeros(size, cells + 1, dtype=torch.float64)
    weights[torch.arange(size), cell] = 1 - t
    weights[torch.arange(size), cell + 1] = t
    return weights


def _centres(x: torch.Tensor) -> torch.Tensor:
    """(1, H, W, 2) float64 pixel centres (x + 0.5, y + 0.5) of images x (N, C, H, W), on the
    CPU (the maps are computed there; `_sample` moves them to the images)."""
    height, width = x.shape[-2:]
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None]


def _sample(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) sampled bicubically at `points` (N, H, W, 2), (x, y) in pixel units; as
    PIL, edge-clamped inside the image and 0 outside it."""
    height, width = x.shape[-2:]
    size = torch.tensor([width, height], dtype=points.dtype)
    inside = ((points >= 0) & (points < size)).all(-1)[:, None].to(x)  # (N, 1, H, W)
    grid = (2 * points / size - 1).to(x)
    out = F.grid_sample(x, grid, "bicubic", padding_mode="border", align_corners=False)
    return out.clamp(0, 1) * inside


def _on_some(
    x: torch.Tensor,
    probability: float,
    generator: torch.Generator | None,
    warp: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor],
) -> torch.Tensor:
    """`warp` applied to each image of x (N, ...) with `probability`, the others kept."""
    if probability <= 0:
        return x
    chosen = torch.rand(len(x), generator=generator) < probability
    if not chosen.any():
        return x
    chosen = chosen.to(x.device)
    out = x.clone()
    out[chosen] = warp(x[chosen], generator)
    return out


# model.augmentation's choices (ABSDefense): x (N, C, H, W), probability -> augmented x.
PIPELINES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "light": light_affine,
    "augmentor": augmentor_pipeline,
}
