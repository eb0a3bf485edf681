"""The small plots' geometry and the number formats people read on the pages."""

import pytest

from portal.plots import cost_plot, positions_plot, scale_bar, seconds


@pytest.mark.parametrize(
    ("pixel_size", "width", "label", "fraction"),
    [
        (10e-9, 41, "100 nm", 100 / 410),
        (103e-9, 28, "500 nm", 500 / (103 * 28)),
        (5e-6, 1000, "1 mm", 1e-3 / 5e-3),
    ],
)
def test_scale_bar_is_a_round_length_near_a_fifth_of_the_width(pixel_size, width, label, fraction):
    bar = scale_bar(pixel_size, width)
    assert bar.label == label
    assert bar.fraction == pytest.approx(fraction)


def test_no_scale_bar_without_a_pixel_size():
    assert scale_bar(None, 100) is None and scale_bar(0.0, 100) is None


def test_cost_plot_is_log_scaled_and_spans_the_box():
    plot = cost_plot([0, 1, 2], [100.0, 10.0, 1.0], width=100, height=50)
    points = [tuple(map(float, p.split(","))) for p in plot.points.split()]
    assert plot.log and (plot.y_top, plot.y_bottom) == ("100", "1")
    # Equal steps on a log scale are equally spaced, from the top left to the bottom right.
    assert points == [(4.0, 4.0), (50.0, 25.0), (96.0, 46.0)]
    assert cost_plot([0], [1.0]) is None


def test_positions_keep_their_aspect():
    plot = positions_plot([(0.0, 0.0), (10.0, 20.0)], size=100)
    assert plot.points == [(6.0, 6.0), (94.0, 50.0)]


def test_durations_read_naturally():
    assert [seconds(v) for v in (0.025, 0.4, 12.34, 245, 7400, None)] == [
        "25 ms",
        "0.4 s",
        "12.3 s",
        "4 min 05 s",
        "2 h 03 min",
        "-",
    ]
