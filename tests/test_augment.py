"""The training augmentation (abslab.data.augment): Augmentor's four operations in torch, checked
on hand-built images against geometry derived by hand from Augmentor's Operations.py, and the
ABS model's `augmentation` key."""

from __future__ import annotations

import math

import pytest
import torch

from abslab.data.augment import (
    augmentor_pipeline,
    distort,
    light_affine,
    random_distortion,
    random_shear,
    random_skew,
    random_zoom,
    shear,
    shear_angles,
    skew,
    skew_corners,
    zoom,
)
from abslab.models.abs import ABSDefense
from abslab.models.vae import pack_by_class, vae_loss_terms

ROWS = torch.arange(28.0)


def _digits(n: int = 64, seed: int = 0) -> torch.Tensor:
    """(n, 1, 28, 28) in [0, 1]: random strokes in the middle, a zero border, as MNIST."""
    x = torch.zeros(n, 1, 28, 28)
    x[..., 4:24, 4:24] = torch.rand(n, 1, 20, 20, generator=torch.Generator().manual_seed(seed))
    return x


def _box(start: int, stop: int) -> torch.Tensor:
    """(28, 28): ones on rows and columns start ... stop - 1."""
    out = torch.zeros(28, 28)
    out[start:stop, start:stop] = 1
    return out


def _ramps() -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixel (i, j) holds its centre's x = j + 0.5, and y = i + 0.5, over 28."""
    x = ((ROWS + 0.5) / 28).expand(1, 1, 28, 28)
    return x, x.transpose(-1, -2)


@pytest.mark.parametrize(
    "augment",
    [
        lambda x, p: light_affine(x, p),
        augmentor_pipeline,
        lambda x, p: random_zoom(x, p, 0.9, 1.1),
        lambda x, p: random_shear(x, p, 6, 6),
        lambda x, p: random_skew(x, p, 0.25),
        lambda x, p: random_distortion(x, p, 3, 3, 1),
    ],
)
def test_probability_zero_is_the_identity(augment):
    x = _digits()
    assert torch.equal(augment(x, 0.0), x)


def test_the_pipeline_keeps_shape_and_range_and_a_seed_repeats_it():
    x = _digits(256)
    out = augmentor_pipeline(x, 1.0, torch.Generator().manual_seed(3))
    again = augmentor_pipeline(x, 1.0, torch.Generator().manual_seed(3))
    other = augmentor_pipeline(x, 1.0, torch.Generator().manual_seed(4))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, again) and not torch.equal(out, other)
    # every image changed (a zoom by 1.00 alone could leave one as it was)
    assert ((out - x).abs().flatten(1).amax(1) > 0.01).float().mean() > 0.99


def test_each_op_touches_about_its_probability_of_the_images():
    x = _digits(1000)
    out = random_skew(x, 0.1, 0.25, torch.Generator().manual_seed(0))
    changed = int((out != x).flatten(1).any(1).sum())
    assert 60 <= changed <= 140  # binomial(1000, 0.1): mean 100, sd 9.5


def test_zoom_by_two_doubles_a_centred_box_and_by_a_half_pads_with_zeros():
    box = torch.zeros(1, 1, 28, 28)
    box[..., 10:18, 10:18] = 1
    # 56 x 56, crop from floor(28 - 14) = 14: output x maps to (x + 14) / 2, so the box's
    # edges 10 and 18 go to 6 and 22
    big = zoom(box, torch.tensor([2.0]))[0, 0]
    assert torch.equal((big > 0.5).float(), _box(6, 22))
    # 14 x 14, "crop" from floor(7 - 14) = -7: the image lands on rows and columns 7 ... 20
    small = zoom(torch.ones(1, 1, 28, 28), torch.tensor([0.5]))[0, 0]
    assert torch.equal(small, _box(7, 21))
    assert torch.allclose(zoom(box, torch.tensor([1.0])), box, atol=1e-6)
    # random_zoom rounds its factor to 2 decimals: 0.517 zooms as 0.52, to round(14.56) = 15
    # pixels (14.48 would give 14), from floor(7.5 - 14) = -7: rows and columns 7 ... 21
    zoomed = random_zoom(torch.ones(1, 1, 28, 28), 1.0, 0.517, 0.517)[0, 0]
    assert torch.allclose(zoomed, _box(7, 22), atol=1e-6)


def test_shear_along_x_tilts_a_vertical_line_and_stretches_the_crop():
    # 6 degrees: t = tan 6 = 0.1051, s = ceil(28 t) = 3; the columns 0 ... 25 of the sheared
    # image are stretched to 28, so x_out = (x_in - t y) 28 / 25
    line = torch.zeros(1, 1, 28, 28)
    line[..., :, 20] = 1
    out = shear(line, torch.tensor([6.0]), torch.tensor([False]))[0, 0]
    centre = (out * ROWS).sum(1) / out.sum(1)  # per row
    t = math.tan(math.radians(6))
    expected = torch.tensor([(20.5 - t * (i + 0.5)) * 28 / 25 - 0.5 for i in range(28)])
    assert (centre - expected).abs().max() < 0.1
    assert abs(centre[0] - 22.40) < 0.1 and abs(centre[27] - 19.22) < 0.1  # top, bottom


def test_shear_along_y_by_a_negative_angle_tilts_a_horizontal_line():
    # -5 degrees: t = tan(-5) = -0.0875, r = round(28 |t|) = 2 rows cropped at the top, the
    # rest stretched to 28: y_out = (y_in - r - t x) 28 / 26
    line = torch.zeros(1, 1, 28, 28)
    line[..., 10, :] = 1
    out = shear(line, torch.tensor([-5.0]), torch.tensor([True]))[0, 0]
    centre = (out * ROWS[:, None]).sum(0) / out.sum(0)  # per column
    t = math.tan(math.radians(-5))
    expected = torch.tensor([(10.5 - 2 - t * (j + 0.5)) * 28 / 26 - 0.5 for j in range(28)])
    assert (centre - expected).abs().max() < 0.1
    assert abs(centre[0] - 8.70) < 0.1 and abs(centre[27] - 11.24) < 0.1


def test_shear_angles_are_augmentors_integers_with_its_odds():
    angles = shear_angles(28_000, 6, 6, torch.Generator().manual_seed(0))
    counts = {int(a): int(c) for a, c in zip(*angles.unique(return_counts=True))}
    assert sorted(counts) == [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7]
    for angle, count in counts.items():  # 14 unit intervals of uniform(-7, 7)
        assert abs(count - 28_000 * (2 if abs(angle) == 1 else 1) / 14) < 300, angle


def test_a_left_tilt_magnifies_the_left_edge_by_its_new_height():
    # left tilt by 7: TL -> (0, -7), BL -> (0, 35); the output column at x is a vertical segment
    # of the image, magnified by the quad's height there over 28, (42 - x / 2) / 28, around y 14
    band = torch.zeros(1, 1, 28, 28)
    band[..., 13:15, :] = 1
    corners = torch.tensor([[[0.0, -7], [28, 0], [28, 28], [0, 35]]])
    out = skew(band, corners)[0, 0]
    mass = out.sum(0)
    expected = torch.tensor([2 * (42 - (j + 0.5) / 2) / 28 for j in range(28)])
    assert (mass / expected - 1).abs().max() < 0.03
    assert (mass[:-1] > mass[1:]).all()
    assert torch.allclose((out * ROWS[:, None]).sum(0) / mass, torch.full((28,), 13.5), atol=1e-4)
    square = torch.tensor([[[0.0, 0], [28, 0], [28, 28], [0, 28]]])
    x = _digits(4)
    assert torch.allclose(skew(x, square.expand(4, 4, 2)), x, atol=1e-5)


def test_skew_corners_move_outward_by_at_most_magnitude_times_the_side():
    n = 32_000
    corners = skew_corners(n, 28, 28, 0.25, torch.Generator().manual_seed(0))
    square = torch.tensor([[0.0, 0], [28, 0], [28, 28], [0, 28]], dtype=torch.float64)
    move = corners - square  # (n, 4, 2)
    outward = torch.tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    assert (move * outward >= 0).all()
    assert ((move != 0).sum(-1) <= 1).all()  # each corner along one axis
    amount = move.abs().amax((1, 2))
    assert amount.min() == 1 and amount.max() == 7  # ceil(0.25 * 28)
    moved = (move != 0).any(-1).sum(1)  # corners moved per image
    tilts = int((moved == 2).sum())
    assert ((moved == 1) | (moved == 2)).all()
    assert abs(tilts - n * 3 / 4) < 500  # TILT, TILT_LEFT_RIGHT, TILT_TOP_BOTTOM of 4 types
    # a tilt moves two corners by the same amount; outward moves keep the whole image inside
    both = move[moved == 2].abs().amax(-1)
    assert (both.amax(1) == both.sort(1).values[:, -2]).all()
    ones = torch.ones(64, 1, 28, 28)
    assert torch.allclose(random_skew(ones, 1.0, 0.25, torch.Generator().manual_seed(1)), ones)


def test_distortion_moves_the_inner_grid_points_and_keeps_the_rest():
    ramp_x, ramp_y = _ramps()
    assert torch.allclose(distort(ramp_x, torch.zeros(1, 2, 2, 2)), ramp_x, atol=1e-6)
    # 3 x 3 cells with edges 0, 9, 18, 28; point (9, 9) moves by dx = 4, point (18, 18) by
    # dy = -4. Pixel (13, 13) (centre 13.5, mid-cell) weighs each point 1/4: it samples
    # (14.5, 12.5); pixel (4, 4) weighs (9, 9) 1/4: samples (5.5, 4.5)
    shifts = torch.zeros(1, 2, 2, 2)
    shifts[0, 0, 0] = torch.tensor([4.0, 0])
    shifts[0, 1, 1] = torch.tensor([0.0, -4])
    out_x, out_y = distort(ramp_x, shifts)[0, 0], distort(ramp_y, shifts)[0, 0]
    assert out_x[13, 13] * 28 == pytest.approx(14.5, abs=1e-4)
    assert out_y[13, 13] * 28 == pytest.approx(12.5, abs=1e-4)
    assert out_x[4, 4] * 28 == pytest.approx(5.5, abs=1e-4)
    assert out_y[4, 4] * 28 == pytest.approx(4.5, abs=1e-4)
    # the cell right of x = 18 above y = 9 has only fixed corners: unchanged
    assert torch.allclose(out_x[:9, 18:], ramp_x[0, 0, :9, 18:], atol=1e-6)
    # the image border stays put: with every inner point moved, nothing samples outside
    ones = torch.ones(64, 1, 28, 28)
    for shift in (-1.0, 1.0):
        assert torch.allclose(distort(ones, torch.full((64, 2, 2, 2), shift)), ones)
    assert torch.allclose(random_distortion(ones, 1.0, 3, 3, 1), ones)


def test_the_abs_model_chooses_its_augmentation_and_refuses_an_unknown_one():
    with pytest.raises(ValueError, match=r"model.augmentation='affine': .*light, augmentor"):
        ABSDefense(bank_size=10, augmentation="affine")
    torch.manual_seed(0)
    model = ABSDefense(bank_size=10, augment=1.0, augmentation="augmentor")
    x, y = _digits(4), torch.tensor([1, 1, 3, 3])
    torch.manual_seed(1)
    loss = model.training_step((x, y, torch.arange(4)), 0)
    torch.manual_seed(1)
    rec_error, kl = vae_loss_terms(model.vaes, *pack_by_class(augmentor_pipeline(x, 1.0), y))
    assert torch.allclose(loss, (rec_error + kl) / 4)
    torch.manual_seed(1)
    rec_error, kl = vae_loss_terms(model.vaes, *pack_by_class(light_affine(x, 1.0), y))
    assert not torch.allclose(loss, (rec_error + kl) / 4)
