"""idap.dense.baseline: a small dataset still gets enough optimizer steps, and a model near chance is named.

Mechanism tests under constructed conditions: the schedule is arithmetic, the chance check is given its figures,
and the stretched training is checked by the steps it ran, not by what it learned (tests/README.md).
"""

import warnings

import pytest

from idap.dense.baseline import MIN_TRAIN_STEPS, scheduled_epochs, train_dense
from idap.report.evaluate import CHANCE_MARGIN_PP, chance_warning


def test_a_small_dataset_is_stretched_to_the_minimum_step_count():
    # digits: 1,149 training samples at batch 128 are 9 steps an epoch; 2 epochs would be 18 steps
    assert scheduled_epochs(2, 1149, 128) * 9 >= MIN_TRAIN_STEPS
    assert scheduled_epochs(2, 1149, 128) < 2 * MIN_TRAIN_STEPS / 9  # no more than needed (rounded to 0.1)
    assert scheduled_epochs(2, 60_000, 128) == 2  # Fashion-MNIST: 938 steps already
    assert scheduled_epochs(2, 1149, 128, min_steps=0) == 2  # 0 keeps the user's epochs
    assert scheduled_epochs(0, 1149, 128) == 0  # no training asked, none given


def test_the_chance_warning_fires_near_chance_only():
    assert "chance" in chance_warning({"val_acc": 10.0 + CHANCE_MARGIN_PP}, 10)
    assert chance_warning({"val_acc": 10.0 + CHANCE_MARGIN_PP + 0.01}, 10) is None
    assert "50.0 % for 2 classes" in chance_warning({"val_acc": 52.0}, 2)
    assert chance_warning({"val_acc": 1.0, "val_ppl": 300.0}, 49152) is None  # a language model: no chance line


def test_train_dense_runs_the_stretched_schedule_and_says_so(digits, monkeypatch):
    ran = {}
    import idap.dense.baseline as baseline

    def counted(model, x, y, *, epochs, **kw):  # the real train() is covered elsewhere: here, what it was asked
        ran["epochs"] = epochs
        return 0.0

    monkeypatch.setattr(baseline, "train", counted)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, metrics = train_dense("cnn_small", digits, epochs=2, seed=0, device="cpu", progress=False)
    steps_per_epoch = -(-len(digits.train_y) // 128)
    assert ran["epochs"] * steps_per_epoch >= MIN_TRAIN_STEPS and metrics["epochs"] == ran["epochs"]
    assert metrics["epochs_requested"] == 2
    messages = [str(w.message) for w in caught]
    assert any("too few optimizer steps" in m for m in messages)
    # untrained (the stub learned nothing): the model is near chance, and the metrics and a warning say so
    assert "chance" in metrics["warning"] and any("chance" in m for m in messages)


@pytest.mark.slow
def test_idap_train_on_digits_for_2_epochs_is_far_above_chance(digits):
    # the case: 2 epochs used to stop at 9.98 %; stretched to 200 steps the model is a real one
    _, metrics = train_dense("cnn_small", digits, epochs=2, seed=0, device="cpu", progress=False)
    assert "warning" not in metrics
    assert metrics["val_acc"] > 10.0 + 4 * CHANCE_MARGIN_PP
