import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idap.prune.schedule import channels_to_remove, prune_fraction


def test_schedule_values_by_hand():
    assert prune_fraction(0, 20, 0.05, 1.5) == pytest.approx(0.05)
    assert prune_fraction(10, 20, 0.05, 1.5) == pytest.approx(0.05 * 1.5 ** 1.5)
    assert channels_to_remove(10, 20, 0.05, 1.5, 1000) == math.floor(1000 * 0.05 * 1.5 ** 1.5)


@given(st.integers(2, 50), st.floats(0.001, 0.5), st.floats(0, 3))
def test_schedule_is_non_decreasing_and_below_one(steps, p0, alpha):
    values = [prune_fraction(t, steps, p0, alpha) for t in range(steps)]
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert all(0 < v < 1 for v in values)


def test_step_out_of_range():
    with pytest.raises(ValueError, match="step t"):
        prune_fraction(5, 5, 0.05, 1.5)
