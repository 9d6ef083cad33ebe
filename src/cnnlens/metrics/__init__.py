"""How far to trust an explanation: faithfulness, localization, sanity checks, complexity.

Every metric takes torch tensors and returns per-image scores on the model's (or maps')
device; :func:`aggregate` turns them into a mean with a 95% confidence interval, and
:func:`random_maps` / :func:`centre_maps` give the floor every number is compared with.

>>> from cnnlens import metrics
>>> exp = cnnlens.explain(model, x, "gradcam")                        # doctest: +SKIP
>>> metrics.deletion(model, x, exp.maps, target=exp.targets).auc      # doctest: +SKIP
>>> metrics.pointing_game(exp.maps, masks)                            # doctest: +SKIP
>>> metrics.cascading_randomization(model, x, "gradcam").passed       # doctest: +SKIP
"""

from __future__ import annotations

from cnnlens.metrics.aggregate import Summary, aggregate
from cnnlens.metrics.baselines import centre_maps, random_maps
from cnnlens.metrics.complexity import entropy, sparseness
from cnnlens.metrics.evaluate import (
    BASELINES,
    evaluate_maps,
    explainer,
    score_methods,
    summarize,
)
from cnnlens.metrics.faithfulness import (
    ConfidenceResult,
    CurveResult,
    average_drop,
    blur,
    confidence_change,
    deletion,
    increase_in_confidence,
    insertion,
    make_substrate,
)
from cnnlens.metrics.localization import (
    energy_pointing_game,
    iou,
    pointing_game,
    relevance_rank_accuracy,
)
from cnnlens.metrics.registry import (
    MetricInfo,
    MetricInputs,
    get_metric,
    list_metrics,
    metric_infos,
    register_metric,
)
from cnnlens.metrics.road import noisy_linear_impute, road, road_combined
from cnnlens.metrics.sanity import (
    PermutedLabels,
    SanityResult,
    cascading_randomization,
    data_randomization,
    independent_randomization,
    randomize_,
    train_on_permuted_labels,
)
from cnnlens.metrics.similarity import spearman, ssim

__all__ = [
    "BASELINES",
    "ConfidenceResult",
    "CurveResult",
    "MetricInfo",
    "MetricInputs",
    "PermutedLabels",
    "SanityResult",
    "Summary",
    "aggregate",
    "average_drop",
    "blur",
    "cascading_randomization",
    "centre_maps",
    "confidence_change",
    "data_randomization",
    "deletion",
    "energy_pointing_game",
    "entropy",
    "evaluate_maps",
    "explainer",
    "get_metric",
    "increase_in_confidence",
    "independent_randomization",
    "insertion",
    "iou",
    "list_metrics",
    "make_substrate",
    "metric_infos",
    "noisy_linear_impute",
    "pointing_game",
    "random_maps",
    "randomize_",
    "register_metric",
    "relevance_rank_accuracy",
    "road",
    "road_combined",
    "score_methods",
    "sparseness",
    "spearman",
    "ssim",
    "summarize",
    "train_on_permuted_labels",
]
