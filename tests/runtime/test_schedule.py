import itertools
import math

import pytest

from edgetune.runtime.schedule import SCHEDULES, learning_rate, warmup_steps


def lrs(schedule, total=100, warmup=10, peak=1.0):
    return [learning_rate(s, total, peak, warmup, schedule) for s in range(total)]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_warmup_ramps_linearly_to_the_peak(schedule):
    values = lrs(schedule)
    assert values[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert values[10] == pytest.approx(1.0)  # the first step after warmup runs at the peak
    assert all(v > 0 for v in values)  # no step is wasted at LR 0, first or last


def test_cosine_decays_from_peak_towards_zero():
    values = lrs("cosine")[10:]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[45] == pytest.approx(0.5)  # half-way through the decay
    assert values[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_linear_and_constant():
    linear = lrs("linear")[10:]
    assert linear[0] == 1.0 and linear[-1] == pytest.approx(1 / 90)
    steps = [a - b for a, b in itertools.pairwise(linear)]
    assert steps == pytest.approx([1 / 90] * 89)
    assert lrs("constant")[10:] == [1.0] * 90


def test_no_warmup_starts_at_the_peak():
    assert learning_rate(0, 10, 3e-4, 0, "cosine") == 3e-4


def test_warmup_steps_fraction_or_count():
    assert warmup_steps(0.03, 1000) == 30
    assert warmup_steps(0.0, 1000) == 0
    assert warmup_steps(0.03, 10) == 0  # rounds
    assert warmup_steps(25, 1000) == 25
    assert warmup_steps(25.0, 10) == 10  # never longer than the run
    with pytest.raises(ValueError, match=">= 0"):
        warmup_steps(-0.1, 10)
    with pytest.raises(ValueError, match="whole"):
        warmup_steps(2.5, 10)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        learning_rate(0, 10, 1.0, 0, "step")
