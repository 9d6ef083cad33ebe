"""cnnlens.targets: each target against a hand-computed score, the engine's use of target
objects (rows, layer choice, bound post-processing), and segmentation/detection maps against
pytorch-grad-cam's targets or a hand-written Grad-CAM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnlens
from cnnlens.core.registry import preset_options
from cnnlens.errors import TargetError
from cnnlens.targets import (
    Binary,
    ClassTarget,
    Detection,
    EmbeddingSimilarity,
    MultiLabel,
    Regression,
    SegmentationRegion,
    open_postprocessing,
)

tv = pytest.importorskip("torchvision")


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    a, b = a - a.mean(), b - b.mean()
    a, b = a / a.norm(), b / b.norm()  # scale-free: random detectors give tiny gradients
    return float((a * b).sum())


# ---------------------------------------------------------------------------------------------
# Hand-computed scores
# ---------------------------------------------------------------------------------------------


def test_class_and_multilabel_scores_by_hand():
    z = torch.tensor([[1.0, 2.0, -1.0], [0.5, -2.0, 3.0]])
    assert torch.equal(ClassTarget(1)(z), torch.tensor([2.0, -2.0]))
    assert torch.equal(ClassTarget([0, 2])(z), torch.tensor([1.0, 3.0]))
    p = torch.exp(torch.tensor(2.0)) / torch.exp(torch.tensor([1.0, 2.0, -1.0])).sum()
    assert torch.allclose(ClassTarget(1, probability=True)(z)[0], p)
    assert torch.allclose(MultiLabel(2, probability=True)(z), torch.sigmoid(z[:, 2]))
    assert torch.equal(ClassTarget(1)({"logits": z}), z[:, 1])
    # labels above 0.5 (logit > 0): image 0 has {0, 1}, image 1 has {0, 2}; K = 2
    above = MultiLabel.labels_above(z, 0.5)
    assert [sorted(r) for r in above.tolist()] == [[0, 1], [0, 2]]
    with pytest.raises(TargetError, match="out of range"):
        ClassTarget(3)(z)
    with pytest.raises(TargetError, match="threshold"):
        MultiLabel.labels_above(z, 0.999)


def test_binary_regression_embedding_scores_by_hand():
    y = torch.tensor([[0.7], [-1.5]])
    assert torch.equal(Binary()(y), torch.tensor([0.7, -1.5]))
    assert torch.equal(Binary("negative")(y), torch.tensor([-0.7, 1.5]))
    assert torch.equal(Regression("decrease")(y[:, 0]), torch.tensor([-0.7, 1.5]))
    e = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    ref = torch.tensor([0.0, 2.0])
    assert torch.allclose(EmbeddingSimilarity(ref)(e), torch.tensor([0.8, 0.0]))
    assert torch.allclose(EmbeddingSimilarity(ref, metric="dot")(e), torch.tensor([8.0, 0.0]))
    per_image = EmbeddingSimilarity(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(per_image(e), torch.tensor([0.6, 1.0]))
    assert torch.allclose(per_image.rows(torch.tensor([1]))(e[1:]), torch.tensor([1.0]))


def test_segmentation_region_scores_by_hand():
    z = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    mask = torch.zeros(4, 4)
    mask[1:3, 2] = 1
    assert torch.equal(SegmentationRegion(1, mask=mask)(z), (z[:, 1, 1:3, 2]).sum(dim=1))
    box = SegmentationRegion(2, box=(0, 1, 2, 4))  # x in [0, 2), y in [1, 4)
    assert torch.equal(box({"out": z}), z[:, 2, 1:4, 0:2].sum(dim=(1, 2)))
    # predicted region: class 2 wins everywhere (largest values), class 0 nowhere
    assert torch.equal(SegmentationRegion(2)(z), z[:, 2].sum(dim=(1, 2)))
    assert torch.equal(SegmentationRegion(0)(z), torch.zeros(2))
    with pytest.raises(TargetError, match="SegmentationRegion"):
        SegmentationRegion(5)(z)


def test_detection_scores_by_hand():
    scores = torch.tensor([0.9, 0.6, 0.3])
    out = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 9, 10]]),
            "labels": torch.tensor([1, 2, 2]),
            "scores": scores,
        }
    ]
    assert float(Detection(1)(out)) == pytest.approx(0.6)
    # box (0,0,10,10) label 2: candidates 1 (IoU 0) and 2 (IoU 0.9) -> detection 2
    assert float(Detection(box=[0, 0, 10, 10], label=2)(out)) == pytest.approx(0.3)
    fit = Detection(box=[0, 0, 10, 10], label=2, box_fit=True)(out)
    assert float(fit) == pytest.approx(0.3 + 0.9)
    with pytest.warns(RuntimeWarning, match="no candidate"):
        assert float(Detection(box=[0, 0, 10, 10], label=2, iou=0.95)(out)) == 0.0
    with pytest.warns(RuntimeWarning, match="no candidate"):
        assert float(Detection(box=[100, 100, 110, 110])(out)) == 0.0
    with pytest.raises(TargetError, match="index= or box="):
        Detection()


# ---------------------------------------------------------------------------------------------
# The engine with target objects
# ---------------------------------------------------------------------------------------------


class TinySeg(nn.Module):
    """(B, 3, H, W) -> dict(out=(B, 3, H, W)) through a 2x-downsampled feature map."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        z = self.head(self.body(x))
        return {"out": F.interpolate(z, size=x.shape[-2:], mode="bilinear")}


@pytest.mark.parametrize(
    "method",
    [
        "gradcam",
        "eigencam",
        "scorecam",
        "ablationcam",
        "saliency",
        "integrated_gradients",
        "occlusion",
        "rise",
    ],
)
def test_methods_on_segmentation_target_batched_equals_single(method):
    torch.manual_seed(0)
    model = TinySeg().eval()
    x = torch.rand(2, 3, 16, 16)
    masks = torch.zeros(2, 16, 16)
    masks[0, :8, :8] = 1
    masks[1, 8:, 8:] = 1
    opts = {**preset_options([method], "tiny").get(method, {})}
    if method == "occlusion":
        opts.update(window=4, stride=4)
    if method == "rise":
        opts.update(seed=0)
    layer = (
        {"layer": "body"} if method in ("gradcam", "eigencam", "scorecam", "ablationcam") else {}
    )
    both = cnnlens.explain(
        model, x, method, target=SegmentationRegion(1, mask=masks), **layer, **opts
    )
    assert both.maps.shape == (2, 16, 16) and torch.isfinite(both.maps).all()
    one = cnnlens.explain(
        model, x[1:], method, target=SegmentationRegion(1, mask=masks[1]), **layer, **opts
    )
    assert torch.allclose(both.maps[1], one.maps[0], atol=1e-4)


def test_target_layer_choice_and_bound_thresholds_restored():
    torch.manual_seed(0)
    seg = tv.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    ).eval()
    exp = cnnlens.explain(seg, torch.rand(1, 3, 64, 64), "gradcam", target=SegmentationRegion(1))
    assert exp.layer == "backbone.16"
    det = tv.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=4, min_size=96, max_size=96
    ).eval()
    before = (det.roi_heads.score_thresh, det.roi_heads.nms_thresh)
    with pytest.raises(RuntimeError, match="boom"), open_postprocessing(det):
        assert det.roi_heads.score_thresh == 0.0
        raise RuntimeError("boom")
    assert (det.roi_heads.score_thresh, det.roi_heads.nms_thresh) == before
    # a large box reads the coarser FPN level, a small one the finest
    assert Detection(box=[0, 0, 900, 900]).layer_for(det) == "backbone.fpn.layer_blocks.1"
    # with the batch, the level the score reaches (here a real forward and backward)
    x = torch.rand(1, 3, 96, 96)
    box, label = _detector_reference(det, x)
    with open_postprocessing(det):
        level = Detection(box=box, label=label).layer_for(det, x)
    assert level.startswith("backbone.fpn.")
    assert Detection(box=[0, 0, 8, 8]).layer_for(det) == "backbone.fpn.layer_blocks.0"


# ---------------------------------------------------------------------------------------------
# Against pytorch-grad-cam and a hand-written Grad-CAM
# ---------------------------------------------------------------------------------------------


def test_segmentation_gradcam_matches_pytorch_grad_cam():
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    torch.manual_seed(0)
    seg = tv.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    ).eval()
    x = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(64, 64)
    mask[8:40, 16:48] = 1  # a region (random weights predict one class everywhere)

    class Out(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            return self.m(t)["out"]

    ours = cnnlens.explain(seg, x, "gradcam", target=SegmentationRegion(1, mask=mask))
    with gc.GradCAM(Out(seg), target_layers=[seg.backbone["16"]]) as cam:
        ref = cam(x, targets=[SemanticSegmentationTarget(1, mask.numpy())])
    assert pearson(ours.maps[0], torch.from_numpy(ref[0])) >= 0.99


def _detector_reference(det, x, *, small: bool = False):
    """The top detection (box, label) with the post-processing opened; with ``small``, the
    top one covering under a quarter of the image (a random-weight detector's whole-image
    box keeps the same score whatever is occluded, so its perturbation maps are constant)."""
    with open_postprocessing(det), torch.no_grad():
        out = det(x)[0]
    i = 0
    if small:
        b = out["boxes"]
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        i = int(torch.nonzero(area < 0.25 * x.shape[-1] * x.shape[-2])[0])
    return out["boxes"][i].tolist(), int(out["labels"][i])


def test_fasterrcnn_gradcam_matches_pytorch_grad_cam():
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    torch.manual_seed(0)
    det = tv.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=4, min_size=96, max_size=96
    ).eval()
    x = torch.rand(1, 3, 96, 96)
    box, label = _detector_reference(det, x)
    target = Detection(box=box, label=label, box_fit=True)
    layer = target.layer_for(det)
    ours = cnnlens.explain(det, x, "gradcam", target=target)
    assert ours.layer == layer
    with open_postprocessing(det), gc.GradCAM(det, [det.get_submodule(layer)]) as cam:
        ref = cam(x, targets=[FasterRCNNBoxScoreTarget([label], torch.tensor([box]))])
    assert pearson(ours.maps[0], torch.from_numpy(ref[0])) >= 0.99


def _hand_gradcam(model, layer, x, score_fn):
    """Grad-CAM by hand: one forward hook, autograd to the activation, ReLU, upsample."""
    acts = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        with open_postprocessing(model):
            score = score_fn(model(x))
        (g,) = torch.autograd.grad(score, acts[0])
    finally:
        handle.remove()
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite"])
def test_one_stage_detectors_against_hand_gradcam(arch):
    """pytorch-grad-cam's documented reshape transform fails on these (KeyError 'pool');
    the reference is a Grad-CAM written by hand on the same layer and score."""
    torch.manual_seed(0)
    kw = dict(weights=None, weights_backbone=None, num_classes=4)
    if arch == "ssdlite":
        det = tv.models.detection.ssdlite320_mobilenet_v3_large(**kw)
        size = 128
    else:
        det = getattr(tv.models.detection, arch)(**kw, min_size=96, max_size=96)
        size = 96
    det.eval()
    x = torch.rand(1, 3, size, size)
    box, label = _detector_reference(det, x)
    target = Detection(box=box, label=label)
    ours = cnnlens.explain(det, x, "gradcam", target=target)
    ref = _hand_gradcam(det, ours.layer, x, lambda out: target(out).sum())
    assert ours.maps.std() > 0
    assert pearson(ours.maps[0], ref) >= 0.99


def test_trust_metrics_read_a_region_score_through_target_score():
    from cnnlens.metrics import deletion, pointing_game
    from cnnlens.targets import TargetScore

    torch.manual_seed(0)
    model = TinySeg().eval()
    x = torch.rand(1, 3, 16, 16)
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1
    target = SegmentationRegion(2, mask=mask)
    exp = cnnlens.explain(model, x, "gradcam", target=target, layer="body")
    curve = deletion(TargetScore(model, target), x, exp.maps, target=0, activation=None, step=64)
    with torch.no_grad():
        intact = target(model(x))
        removed = target(model(torch.zeros_like(x)))
    # the curve runs from the region's score on the image to its score on the zero substrate
    assert float(curve.scores[0, 0]) == pytest.approx(float(intact[0]), rel=1e-5)
    assert float(curve.scores[0, -1]) == pytest.approx(float(removed[0]), rel=1e-5)
    assert pointing_game(exp.maps, mask[None].bool()).shape == (1,)


# The small segmenter and detector trained on generated shapes (Grad-CAM on each object):
# tests/test_task_models.py
# ---------------------------------------------------------------------------------------------


def test_multilabel_labels_above_give_one_map_per_label():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        labels = MultiLabel.labels_above(model(x), threshold=0.3)
    exp = cnnlens.explain(model, x, "gradcam", target=labels, layer="0")
    assert exp.maps.shape == (2, labels.shape[1], 16, 16)
    one = cnnlens.explain(model, x, "gradcam", target=MultiLabel(int(labels[0, 0])), layer="0")
    assert torch.allclose(exp.maps[0, 0], one.maps[0], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("gradcam++", {}),
        ("eigencam", {}),
        ("scorecam", {"batch_size": 64}),
        ("ablationcam", {"batch_size": 64}),
        ("integrated_gradients", {"n_steps": 4}),
        ("occlusion", {"window": 16, "stride": 8}),
        ("rise", {"n_masks": 16, "seed": 0}),
    ],
)
def test_methods_on_a_detection(method, options):
    torch.manual_seed(0)
    det = tv.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=4, min_size=64, max_size=64
    ).eval()
    # torchvision initializes the class head at std 0.01, so a random detector's class scores
    # hardly move when pixels are occluded; a larger head makes them depend on the input
    nn.init.normal_(det.roi_heads.box_predictor.cls_score.weight, std=1.0)
    x = torch.rand(1, 3, 64, 64)
    box, label = _detector_reference(det, x, small=True)
    exp = cnnlens.explain(det, x, method, target=Detection(box=box, label=label), **options)
    assert exp.maps.shape == (1, 64, 64) and torch.isfinite(exp.maps).all()
    assert float(exp.maps.max()) == pytest.approx(1.0)
    assert det.roi_heads.score_thresh == 0.05  # the post-processing is restored
