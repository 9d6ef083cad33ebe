"""The explanation benchmark: every method x every metric over a dataset with ground truth.

:func:`assess` explains ``n`` images of a dataset with each method (and two baselines,
``random`` and ``centre`` maps), scores every map with the metrics of
:mod:`cnnlens.metrics` (faithfulness, localization against ground-truth masks,
complexity), runs the cascading model-randomization sanity check (Adebayo et al. 2018) on
a few images per method, and writes to ``out``:

- ``table.md``, ``table.csv``, ``table.json``: per method x metric the mean over rows
  with its 95% confidence interval (:func:`cnnlens.metrics.aggregate`: Student's t, the
  percentile bootstrap for the 0/1 scores of the pointing game and increase in confidence);
- ``figures/curves.png`` (mean deletion and insertion curves), ``figures/sanity.png`` (the
  similarity to the original map as layers are re-initialized, every method) and
  ``figures/sanity_<method>.png``, ``figures/examples.png`` (a few maps next to the masks);
- ``results.json`` and ``report.html`` (the metrics table, the figures, the sanity
  verdicts; ``cnnlens report DIR`` rebuilds the HTML from the JSON);
- ``rows/``: a Parquet store (:class:`cnnlens.dataset.Store`) with one row per finished
  (method, image, class), one atomic part file per batch, and ``sanity/<method>.json``:
  what makes the run resumable. Run the same call again after an interruption and only the
  missing rows are computed; ``engine="ray"`` computes them on Ray Data.

A sanity verdict is :func:`cnnlens.metrics.sanity.cascade_verdict`: the upper half of
the cascade (:func:`upper_similarity`) with its sample size and a bootstrap interval,
"inconclusive" when the interval spans the threshold; ``cnnlens demo`` reports the same
rule, and :func:`sanity_verdicts` gives it for any model and a few images.

The modules: :mod:`~cnnlens.assess.protocol` (constants and name resolution),
:mod:`~cnnlens.assess.data` (images, masks, rows), :mod:`~cnnlens.assess.job` (the
rows as a :class:`cnnlens.dataset.Job`), :mod:`~cnnlens.assess.store` (hashes, JSON
files), :mod:`~cnnlens.assess.sanity`, :mod:`~cnnlens.assess.run` (one run's steps),
:mod:`~cnnlens.assess.tables`, :mod:`~cnnlens.assess.outputs` (files and report) and
:mod:`~cnnlens.assess.pipeline` (:func:`assess`), :mod:`~cnnlens.assess.tasks` (segmentation
rows); the figures are in
:mod:`cnnlens.viz.assess`.

The datasets: ``shapes`` (one shape per image, its mask), ``shapes-pair`` (two shapes per
image: each image gives two rows, one per class, each scored against its own shape's mask),
any other :func:`cnnlens.data.get_dataset` name without masks (faithfulness, complexity and
sanity only, e.g. ``mnist-embedded``), and ``folder`` (your images with a parallel folder
of binary mask PNGs, see :func:`cnnlens.data.load_masked_folder`). ``task="segmentation"``
assesses a segmenter on ``shapes-objects`` (several objects per image): one row per image x
object, the object's class summed over the predicted region as the score, each map scored
against the object's own mask (:mod:`~cnnlens.assess.tasks`).

Example:
    >>> net, info = cnnlens.models.load("runs/shapes/model.safetensors")    # doctest: +SKIP
    >>> data = load_data("shapes", model_info=info)
    >>> res = assess(net, data, "runs/assess", n=100, model_info=info)
    >>> print(res.markdown())
"""

from __future__ import annotations

from cnnlens.assess.data import AssessData, load_data
from cnnlens.assess.pipeline import assess
from cnnlens.assess.protocol import (
    BASELINES,
    DELETION_SUBSTRATE,
    POINTING_TOLERANCE,
    SANITY_CRITERION,
    SANITY_METRIC,
    assess_metrics,
    metric_direction,
    metric_label,
    resolve_methods,
    resolve_metrics,
)
from cnnlens.assess.sanity import sanity_checks, sanity_verdicts
from cnnlens.assess.tables import AssessResult
from cnnlens.data.masked import load_masked_folder
from cnnlens.metrics.sanity import upper_similarity

__all__ = [
    "BASELINES",
    "DELETION_SUBSTRATE",
    "POINTING_TOLERANCE",
    "SANITY_CRITERION",
    "SANITY_METRIC",
    "AssessData",
    "AssessResult",
    "assess",
    "assess_metrics",
    "load_data",
    "load_masked_folder",
    "metric_direction",
    "metric_label",
    "resolve_methods",
    "resolve_metrics",
    "sanity_checks",
    "sanity_verdicts",
    "upper_similarity",
]
