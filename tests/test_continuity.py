"""Continuity: equal to Quantus on the same shifts; the translation by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens.errors import InputError
from cnnlens.metrics.continuity import continuity, translate_x
from cnnlens.metrics.registry import MetricInputs, get_metric
from cnnlens.models.seeds import GapCNN

quantus = pytest.importorskip("quantus")


def _setup():
    torch.manual_seed(0)
    model = GapCNN(5, 3).eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)

    def explain(xx, t):
        return cnnlens.explain(model, xx, "saliency", target=t).maps

    return model, x, y, explain


@pytest.mark.parametrize("n_steps", [28, 5])
def test_equal_to_quantus(n_steps):
    model, x, y, explain = _setup()
    maps = explain(x, y)
    got = continuity(model, x, maps, explain, y, n_steps=n_steps, batch_size=7)

    def q_explain(model, inputs, targets, **_):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).unsqueeze(1).numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = quantus.Continuity(nr_steps=n_steps, disable_warnings=True)(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=maps.unsqueeze(1).numpy(),
            explain_func=q_explain,
            device="cpu",
        )
    np.testing.assert_allclose(got.numpy(), np.asarray(want, dtype=np.float64), rtol=1e-4)


def test_translate_by_hand():
    x = torch.arange(8.0).view(1, 1, 2, 4) + 1  # min 1
    right = translate_x(x, 1)
    assert right[0, 0, 0].tolist() == [1.0, 1.0, 2.0, 3.0]
    left = translate_x(x, -2)
    assert left[0, 0, 1].tolist() == [7.0, 8.0, 1.0, 1.0]
    assert torch.equal(translate_x(x, 4), torch.ones_like(x))


def test_scorer_and_errors():
    model, x, y, explain = _setup()
    maps = explain(x, y)
    info = get_metric("continuity")
    assert info.family == "robustness" and info.needs_explain and not info.higher_is_better
    got = info.scorer(MetricInputs(model, x, maps, target=y, explain=explain), n_steps=3)
    torch.testing.assert_close(got, continuity(model, x, maps, explain, y, n_steps=3))
    with pytest.raises(InputError, match="n_steps"):
        continuity(model, x, maps, explain, y, n_steps=100)
