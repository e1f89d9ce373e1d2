"""embed.views: per-sample parameters are a function of (seed, index, view) alone."""

import numpy as np

from embed.views import AUGMENTS, BLUR_SIGMA, FLIP, HUE, SAT, SCALE, params_source, view_params


def test_parameters_depend_only_on_seed_index_view():
    aug = AUGMENTS["msn"]
    a = view_params(0, 17, 1, aug=aug)
    assert np.array_equal(a, view_params(0, 17, 1, aug=aug))
    assert not np.array_equal(a, view_params(0, 17, 0, aug=aug))
    assert not np.array_equal(a, view_params(1, 17, 1, aug=aug))
    assert not np.array_equal(a, view_params(0, 18, 1, aug=aug))


def test_parameter_ranges_and_rates():
    rows = np.stack([view_params(3, i, 0, aug=AUGMENTS["simclr"]) for i in range(4000)])
    assert rows[:, SCALE].min() >= 0.08 and rows[:, SCALE].max() <= 1.0
    assert abs(rows[:, FLIP].mean() - 0.5) < 0.03
    assert abs((rows[:, SAT] == 0).mean() - 0.2) < 0.03  # grayscale p 0.2
    assert abs((rows[:, BLUR_SIGMA] > 0).mean() - 0.5) < 0.03
    assert np.abs(rows[:, HUE]).max() <= 0.2 * 360
    msn = np.stack([view_params(3, i, 0, aug=AUGMENTS["msn"]) for i in range(500)])
    assert msn[:, SCALE].min() >= 0.3


def test_source_follows_the_reading_order_and_pads_like_the_reader():
    class Info:
        def __init__(self, iteration):
            self.iteration = iteration

    order = np.array([8, 9, 10, 11, 12])
    src = params_source(order, 3, seed=4, view=1, aug=AUGMENTS["msn"])
    second = src(Info(1))  # samples 11, 12, then 12 again as padding
    assert second.shape == (3, 10)
    assert np.array_equal(second[0], view_params(4, 11, 1, aug=AUGMENTS["msn"]))
    assert np.array_equal(second[2], view_params(4, 12, 1, aug=AUGMENTS["msn"]))
