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
from cnnlens.metrics.axiomatic import (
    Completeness,
    completeness,
    input_invariance,
    non_sensitivity,
)
from cnnlens.metrics.baselines import centre_maps, random_maps
from cnnlens.metrics.complexity import entropy, sparseness
from cnnlens.metrics.continuity import continuity, translate_x
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
from cnnlens.metrics.faithfulness_extra import (
    SensitivityN,
    infidelity,
    irof,
    sensitivity_n,
    sufficiency,
)
from cnnlens.metrics.grid_pointing import cell_masks, grid_pointing_game, make_mosaics
from cnnlens.metrics.localization import (
    energy_pointing_game,
    iou,
    pointing_game,
    relevance_rank_accuracy,
)
from cnnlens.metrics.mask_localization import (
    attribution_localisation,
    roc_auc,
    top_k_intersection,
)
from cnnlens.metrics.randomization import (
    efficient_mprt,
    random_logit,
    randomized_copy,
    smooth_mprt,
)
from cnnlens.metrics.registry import (
    MetricInfo,
    MetricInputs,
    get_metric,
    list_metrics,
    metric_infos,
    register_metric,
)
from cnnlens.metrics.removal import (
    faithfulness_correlation,
    monotonicity_correlation,
    pixel_flipping,
    random_subsets,
    region_perturbation,
    selectivity,
)
from cnnlens.metrics.road import noisy_linear_impute, road, road_combined
from cnnlens.metrics.robustness import (
    avg_sensitivity,
    draw_noise,
    local_lipschitz_estimate,
    max_sensitivity,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)
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
from cnnlens.metrics.tasks import ObjectLocalization, box_masks, localize_objects

__all__ = [  # noqa: RUF022 (the trust-measurement names are kept together below)
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
    "box_masks",
    "localize_objects",
    "ObjectLocalization",
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
    # issue 15: grid pointing game, robustness, more faithfulness and localization
    "attribution_localisation",
    "avg_sensitivity",
    "cell_masks",
    "continuity",
    "draw_noise",
    "faithfulness_correlation",
    "grid_pointing_game",
    "local_lipschitz_estimate",
    "make_mosaics",
    "max_sensitivity",
    "monotonicity_correlation",
    "pixel_flipping",
    "random_subsets",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "region_perturbation",
    "roc_auc",
    "selectivity",
    "top_k_intersection",
    "translate_x",
    # issue 15, part A: IROF, sensitivity-n, infidelity, sufficiency; the axiomatic family
    "Completeness",
    "SensitivityN",
    "completeness",
    "infidelity",
    "input_invariance",
    "irof",
    "non_sensitivity",
    "sensitivity_n",
    "sufficiency",
    # issue 15, part B: randomization
    "efficient_mprt",
    "random_logit",
    "randomized_copy",
    "smooth_mprt",
]
