"""The per-method summary chart: rescaling by hand, both kinds drawn, errors."""

from __future__ import annotations

import math

import pytest

from cnnlens import metrics as M
from cnnlens.errors import InputError
from cnnlens.viz import save_png
from cnnlens.viz.summary_chart import relative_scores, summary_chart

MEANS = {
    "gradcam": {"grid_pointing_game": 0.9, "max_sensitivity": 0.2, "custom": 3.0},
    "saliency": {"grid_pointing_game": 0.5, "max_sensitivity": 0.6, "custom": 3.0},
    "random": {"grid_pointing_game": 0.25, "max_sensitivity": float("nan"), "custom": 3.0},
}
# the directions, as the caller reads them from the metric registry
UP = {
    **{m: M.get_metric(m).higher_is_better for m in ("grid_pointing_game", "max_sensitivity")},
    "custom": True,
}


def test_best_is_one_worst_zero_in_each_direction():
    methods, metrics, table = relative_scores(MEANS, UP)
    assert methods == ["gradcam", "saliency", "random"]
    assert metrics == ["grid_pointing_game", "max_sensitivity", "custom"]
    assert table[0] == [1.0, 1.0, 1.0]  # higher PG best; lower sensitivity best; ties -> 1
    assert table[1][0] == pytest.approx((0.5 - 0.25) / (0.9 - 0.25))
    assert table[1][1] == 0.0
    assert table[2][0] == 0.0 and math.isnan(table[2][1])


@pytest.mark.parametrize("kind", ["radar", "bars"])
def test_draws_a_png(kind, tmp_path):
    fig = summary_chart(MEANS, kind=kind, higher_is_better=UP)
    path = save_png(fig, tmp_path / f"{kind}.png")
    assert path.stat().st_size > 1000
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == list(MEANS)


def test_errors():
    with pytest.raises(InputError, match="no direction"):
        relative_scores({"a": {"nonsense": 1.0}}, UP)
    with pytest.raises(InputError, match="at least 3 metrics"):
        summary_chart({"a": {"grid_pointing_game": 1.0}}, kind="radar", higher_is_better=UP)
    with pytest.raises(InputError, match="kind"):
        summary_chart(MEANS, kind="pie", higher_is_better=UP)
