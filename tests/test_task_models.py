"""The shapes-objects generator, box masks, and a small detector and segmenter trained on
generated shapes: Grad-CAM of each object lands on its own object, not on the other."""

from __future__ import annotations

import warnings

import pytest
import torch

import cnnlens
from cnnlens.data.objects import OBJECT_TASK_CLASSES, boxes_from_masks, make_shapes_objects
from cnnlens.data.shapes import make_shapes_pair
from cnnlens.errors import InputError, ModelError
from cnnlens.metrics import deletion, pointing_game
from cnnlens.metrics.tasks import box_masks, localize_objects
from cnnlens.models.tasks import create_task_model, shapes_detector
from cnnlens.targets import Detection, SegmentationRegion, TargetScore

pytest.importorskip("torchvision")


def test_shapes_objects_boxes_masks_and_class_maps_agree():
    data = make_shapes_objects(6, size=48, seed=3, split="test")
    images, pair, masks = make_shapes_pair(6, size=48, seed=3, split="test")
    assert torch.equal(data.images, torch.from_numpy(images).float() / 255)  # one generator
    assert torch.equal(data.labels, torch.from_numpy(pair) + 1)
    assert torch.equal(data.masks, torch.from_numpy(masks))
    assert data.classes[0] == "background" and list(data.classes) == OBJECT_TASK_CLASSES
    seg = data.segmentation()
    for i in range(6):
        for k in range(2):
            m = data.masks[i, k]
            ys, xs = m.nonzero(as_tuple=True)
            box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
            assert data.boxes[i, k].tolist() == box  # tight, inclusive-exclusive
            assert (seg[i][m] == data.labels[i, k]).all()
        assert (seg[i][~data.masks[i].any(0)] == 0).all()
    t = data.detection_targets(torch.tensor([4]))
    assert (
        torch.equal(t[0]["boxes"], data.boxes[4])
        and t[0]["labels"].tolist() == (pair[4] + 1).tolist()
    )
    with pytest.raises(InputError, match="empty"):
        boxes_from_masks(torch.zeros(2, 5, 5, dtype=torch.bool))


def test_shapes_pair_dataset_has_the_same_boxes():
    from cnnlens.data import get_dataset

    ds = get_dataset("shapes-pair", split="test", n=4, size=48, seed=1)
    data = make_shapes_objects(4, size=48, seed=1, split="test")
    for i in range(4):
        assert torch.equal(ds.object_boxes(i), data.boxes[i].long())
        assert torch.equal(ds.object_classes(i) + 1, data.labels[i])
        assert torch.equal(ds.object_masks(i), data.masks[i])


def test_box_masks_by_hand():
    m = box_masks(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.5, 6.0]]), (5, 6))
    expected = torch.zeros(2, 5, 6, dtype=torch.bool)
    expected[0, 2:4, 1:3] = True  # pixel centres 1.5, 2.5 in x; 2.5, 3.5 in y
    # box 1 covers x in [0, 0.5): no pixel centre (0.5 is not < 0.5), an empty mask
    assert torch.equal(m, expected)
    assert box_masks([0, 0, 6, 5], (5, 6)).all()
    with pytest.raises(InputError, match=r"\(x0, y0, x1, y1\)"):
        box_masks(torch.zeros(3), (4, 4))


def test_task_models_by_name():
    det = create_task_model("shapes-detector", "detection", size=48)
    assert not det.training and det.backbone.return_layers == {"body": "0"}
    with pytest.raises(ModelError, match="not a segmentation model"):
        create_task_model("shapes-detector", "segmentation")
    with pytest.raises(ModelError, match="num_classes is for random weights"):
        create_task_model("fcn_resnet50", "segmentation", num_classes=3, weights="DEFAULT")
    with pytest.raises(ModelError, match="no named weights"):
        create_task_model("shapes-segmenter", "segmentation", weights="DEFAULT")
    # the detection target's automatic layer on the shapes backbone
    assert Detection(box=[0, 0, 10, 10], label=1).layer_for(shapes_detector(size=48)) == (
        "backbone.body"
    )


@pytest.fixture(scope="module")
def one_thread():
    """Train on one thread: on a shared, loaded machine two spinning threads per process
    slow training down several-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detector(one_thread):
    from cnnlens.pipelines.task_models import train_shapes_detector

    return train_shapes_detector(steps=500, n=1024, size=64, seed=0).model


@pytest.fixture(scope="module")
def segmenter(one_thread):
    from cnnlens.pipelines.task_models import train_shapes_segmenter

    return train_shapes_segmenter(steps=300, n=1024, size=64, seed=0).model


_TEST = 32


@pytest.mark.slow
def test_trained_shapes_detector_gradcam_lands_on_each_detection(detector):
    data = make_shapes_objects(_TEST, size=64, split="test")
    with torch.no_grad():
        out = detector(data.images)
    found = sum(
        int(((o["labels"] == data.labels[i, k]).any()).item())
        for i, o in enumerate(out)
        for k in range(2)
    )
    assert found >= 0.9 * 2 * _TEST  # the detector finds its objects

    def target(i, k):
        return Detection(box=data.boxes[i, k].tolist(), label=int(data.labels[i, k]))

    boxes = box_masks(data.boxes, (64, 64))  # (N, 2, H, W): pointing against the box
    # the class tower: only the class evidence flows there (see docs/tasks.md)
    layer = "head.classification_head.conv"
    for slot in localize_objects(detector, data.images, boxes, target, layer=layer):
        hit, base = slot.means()["pointing"], slot.means()["baseline"]
        assert hit >= 0.85 and hit > 5 * base
        assert slot.means()["pointing_other"] <= 0.15
    # deletion on a detection's score: removing the pixels its Grad-CAM ranks first makes the
    # score fall faster than a random order does (mean AUC over 8 detections)
    gen = torch.Generator().manual_seed(0)
    ours, rand = [], []
    for i in range(8):
        t, x = target(i, 0), data.images[i : i + 1]
        score = TargetScore(detector, t)
        exp = cnnlens.explain(detector, x, "gradcam", target=t, layer=layer)
        for maps, into in ((exp.maps, ours), (torch.rand(1, 64, 64, generator=gen), rand)):
            with warnings.catch_warnings():  # the object deleted, no candidate matches: 0
                warnings.filterwarnings("ignore", "Detection: no candidate", RuntimeWarning)
                curve = deletion(score, x, maps, target=0, activation=None, step=64)
            into.append(float(curve.auc[0]))
    assert sum(ours) < 0.5 * sum(rand)


@pytest.mark.slow
def test_trained_shapes_segmenter_gradcam_lands_on_each_region(segmenter):
    data = make_shapes_objects(_TEST, size=64, split="test")
    with torch.no_grad():
        pred = segmenter(data.images)["out"].argmax(1)
    assert float((pred == data.segmentation()).float().mean()) >= 0.9

    def target(i, k):
        return SegmentationRegion(int(data.labels[i, k]))  # the predicted region

    exp = cnnlens.explain(segmenter, data.images[:1], "gradcam", target=target(0, 0))
    assert exp.layer == "backbone.body"  # automatic: the backbone's last map
    for slot in localize_objects(segmenter, data.images, data.masks, target):
        hit, base = slot.means()["pointing"], slot.means()["baseline"]
        assert hit >= 0.85 and hit > 5 * base
        assert slot.means()["pointing_other"] <= 0.15
        assert slot.means()["energy"] > 5 * base
    assert pointing_game(exp.maps, data.masks[:1, 0]).shape == (1,)
