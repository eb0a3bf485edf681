"""The one drawing code of a result's images (recon.preview): the PNG beside each result
and the portal's images come from it."""

import numpy as np
import pytest
from PIL import Image

from portal import plots
from recon.preview import (
    COLOUR_MAPS,
    GAP,
    LABEL_HEIGHT,
    colour_map,
    display_region,
    draw_preview,
    grey_levels,
    scale_bar,
)


@pytest.mark.parametrize(
    ("pixel_size", "width", "length_m", "label"),
    [(10e-9, 200, 500e-9, "500 nm"), (10e-9, 1000, 2e-6, "2 µm"), (1e-6, 60, 10e-6, "10 µm")],
)
def test_scale_bar_is_a_round_length_near_a_fifth_of_the_width(pixel_size, width, length_m, label):
    pixels, text = scale_bar(pixel_size, width)
    assert text == label
    assert pixels * pixel_size == pytest.approx(length_m)
    assert width / 10 <= pixels <= width / 2
    assert pixels == pytest.approx(plots.scale_bar(pixel_size, width).fraction * width)


def test_scale_bar_needs_a_pixel_size():
    assert scale_bar(None, 100) is None
    assert scale_bar(float("nan"), 100) is None


def test_contrast_stretch_ignores_a_few_hot_pixels():
    values = np.random.default_rng(0).normal(size=(100, 100))
    values[0, :5] = 1e6
    levels, low, high = grey_levels(values)
    assert high < 10 and low > -10
    assert levels.std() > 40  # the hot pixels did not flatten the image


def test_colour_maps_have_256_levels_and_the_cyclic_one_wraps():
    for name in COLOUR_MAPS:
        assert colour_map(name).shape == (256, 3)
    twilight = colour_map("twilight").astype(int)
    assert np.abs(twilight[0] - twilight[-1]).max() <= 2
    with pytest.raises(ValueError, match="unknown colour map"):
        colour_map("jet")


def test_display_region_crops_to_the_illuminated_part():
    object_ = np.ones((200, 200), np.complex64)
    probe = np.zeros((20, 20), np.complex64)
    probe[5:15, 5:15] = 1
    positions = np.array([[50.0, 60.0], [70.0, 90.0]])
    cropped, inside = display_region(object_, positions, probe)
    assert cropped.shape == inside.shape
    assert cropped.shape[0] < 60 and cropped.shape[1] < 60


def test_preview_has_colour_bars_scale_bars_and_probe_phase():
    rows, cols = np.indices((80, 80))
    object_ = np.exp(1j * 0.5 * ((rows > 30) & (cols > 30))).astype(np.complex64)
    probe = np.exp(1j * rows[:16, :16] / 5.0).astype(np.complex64)
    with_size = draw_preview(object_, pixel_size=20e-9, probe=probe)
    without = draw_preview(object_, probe=probe)
    assert with_size.mode == "RGB"
    # phase, amplitude, probe amplitude, probe phase: four panels
    panel = 256 + GAP  # 80 px enlarged 4x would be 320; at least 256
    assert with_size.width >= 4 * panel
    pixels = np.asarray(with_size).astype(int)
    # Under the phase panel: a colour bar (dark to light, grey map), then a scale bar.
    top = GAP + LABEL_HEIGHT
    panel_height = (
        next(y for y in range(top, pixels.shape[0]) if (pixels[y, GAP + 5] == 255).all()) - top
    )
    bar = pixels[top + panel_height + 8, GAP + 2 : GAP + 250, 0]
    assert bar[-10:].mean() - bar[:10].mean() > 150
    # The probe phase panel uses the cyclic colour map: it has colour, not only grey.
    right = pixels[top : top + panel_height, -GAP - 100 : -GAP]
    assert np.abs(right[..., 0] - right[..., 2]).max() > 30
    # Same size either way; only the scale bar strip differs.
    assert with_size.size == without.size
    assert not np.array_equal(np.asarray(with_size), np.asarray(without))
    Image.fromarray(np.asarray(with_size))  # a valid image


def test_a_flat_image_is_mid_grey_not_stretched_rounding_noise():
    values = 1.0 + np.random.default_rng(1).normal(scale=1e-8, size=(20, 20))
    levels, low, _ = grey_levels(values)
    assert (levels == 128).all() and low == pytest.approx(1.0)
