"""The engine's contract: targets, layers, shapes, batching, and a model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import cnnlens
from cnnlens.core.registry import preset_options
from cnnlens.errors import InputError, LayerNotFoundError, MethodNotFoundError, TargetError
from conftest import MODEL_KINDS, assert_unchanged, hook_count, make_model, pearson, snapshot

CAM_METHODS = ["cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"]
SLOW_METHODS = {"scorecam", "ablationcam", "occlusion", "rise", "smoothgrad"}


# the cheapest settings each method declares on its class (its "tiny" preset)
TINY = preset_options(cnnlens.list_methods(), "tiny")


def _run(model: nn.Module, x: torch.Tensor, method: str, **kw):
    return cnnlens.explain(model, x, method, **TINY.get(method, {}), **kw)


def test_registry_lists_the_cam_family() -> None:
    names = cnnlens.list_methods()
    assert names == sorted(names)
    assert set(CAM_METHODS) <= set(names)
    with pytest.raises(MethodNotFoundError, match="gradcam"):
        cnnlens.get_method("gradcm")
    with pytest.raises(ValueError, match="already registered"):
        cnnlens.register("gradcam")(type("Dup", (), {}))


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("method", cnnlens.list_methods())
def test_every_method_every_model_shape(kind: str, method: str, images: torch.Tensor) -> None:
    model = make_model(kind)
    before = snapshot(model)
    # the automatic layer never is a module run several times: the reused net gets its stem,
    # which does not feed the GAP head
    if method == "cam" and kind != "gap":
        with pytest.raises(cnnlens.errors.ModelError):
            _run(model, images, method)
        assert_unchanged(model, before)
        return
    exp = _run(model, images, method)
    assert exp.maps.shape == (3, 32, 32)
    assert exp.maps.dtype == torch.float32
    assert torch.isfinite(exp.maps).all()
    assert exp.maps.min() >= 0 and exp.maps.max() <= 1
    assert exp.targets.shape == (3,) and exp.targets.dtype == torch.long
    assert exp.method == method
    torch.testing.assert_close(exp.targets, model(images).argmax(1))
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("kind", ["inplace", "functional", "gap"])
def test_batch_equals_single_images(kind: str, method: str, images: torch.Tensor) -> None:
    if method == "cam" and kind != "gap":
        pytest.skip("cam needs a GAP head")
    model = make_model(kind)
    batched = cnnlens.explain(model, images, method, target=[0, 1, 2])
    for i in range(3):
        single = cnnlens.explain(model, images[i], method, target=i)
        torch.testing.assert_close(batched.maps[i], single.maps[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched.raw[i], single.raw[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_topk_equals_separate_calls(method: str, images: torch.Tensor) -> None:
    model = make_model("gap")
    exp = cnnlens.explain(model, images, method, topk=3)
    assert exp.maps.shape == (3, 3, 32, 32) and exp.targets.shape == (3, 3)
    top = model(images).topk(3, dim=1).indices
    assert torch.equal(exp.targets, top)
    for k in range(3):
        single = cnnlens.explain(model, images, method, target=top[:, k])
        torch.testing.assert_close(exp.maps[:, k], single.maps, atol=1e-5, rtol=1e-4)
    # an explicit (B, K) target gives the same
    explicit = cnnlens.explain(model, images, method, target=top)
    torch.testing.assert_close(explicit.maps, exp.maps)


def test_topk_uses_one_forward_pass(images: torch.Tensor) -> None:
    model = make_model("gap")
    calls = []
    handle = model.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    try:
        cnnlens.explain(model, images, "gradcam", topk=4, layer="features")
    finally:
        handle.remove()
    assert calls == [3]


def test_two_classes_in_one_image_get_two_maps() -> None:
    """A GAP net whose two classes respond to two different corners."""
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    model.append(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        model[4].weight.copy_(torch.eye(2))
    x = torch.zeros(1, 1, 8, 8)
    x[..., :3, :3] = 1.0  # class 0 evidence top-left
    x[..., -3:, -3:] = -1.0  # class 1 evidence bottom-right
    exp = cnnlens.explain(model.eval(), x, "gradcam", target=torch.tensor([[0, 1]]), layer="1")
    m0, m1 = exp.maps[0]
    assert m0[:3, :3].mean() > 0.9 and m0[-3:, -3:].max() < 0.1
    assert m1[-3:, -3:].mean() > 0.9 and m1[:3, :3].max() < 0.1


def test_callable_target_on_dict_output(images: torch.Tensor) -> None:
    base = make_model("gap")

    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = base

        def forward(self, x: torch.Tensor) -> dict:
            return {"logits": self.net(x), "aux": x.mean()}

    wrapped = DictOut().eval()
    ref = cnnlens.explain(base, images, "gradcam", target=2)
    exp = cnnlens.explain(wrapped, images, "gradcam", target=lambda out: out["logits"][:, 2])
    torch.testing.assert_close(exp.maps, ref.maps)
    assert exp.layer == "net." + ref.layer
    assert exp.targets.tolist() == [-1, -1, -1]
    # a mapping's "logits" is read automatically (issue 12); a key it lacks names the keys
    auto = cnnlens.explain(wrapped, images, "gradcam", target=2)
    torch.testing.assert_close(auto.maps, ref.maps)
    assert auto.output == "logits"
    with pytest.raises(TargetError, match="'logits', 'aux'"):
        cnnlens.explain(wrapped, images, "gradcam", target=2, output="scores")


def test_multilabel_callable_target(images: torch.Tensor) -> None:
    model = make_model("gap")
    exp = cnnlens.explain(model, images, "gradcam", target=lambda out: out.sigmoid()[:, 1])
    assert exp.maps.shape == (3, 32, 32)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (5, "out of range: the model has 5 classes"),
        (-1, "out of range"),
        ([0, 1], "2 entries but the batch has 3"),
        ([0, 1, 2, 3], "4 entries but the batch has 3"),
        (torch.tensor([0.5, 1.0, 2.0]), "integer class indices"),
        (torch.zeros(2, 2, dtype=torch.long), r"shape \(3, K\)"),
        ("cat", "target must be"),
    ],
)
def test_bad_targets_raise_and_leave_no_trace(target, match, images: torch.Tensor) -> None:
    model = make_model("inplace")
    model.features[1].train()  # a mixed train/eval state must survive the error
    model.features[0].weight.requires_grad_(False)
    before = snapshot(model)
    with pytest.raises(TargetError, match=match):
        cnnlens.explain(model, images, "gradcam", target=target)
    assert_unchanged(model, before)


def test_topk_errors(images: torch.Tensor) -> None:
    model = make_model("gap")
    with pytest.raises(TargetError, match="topk"):
        cnnlens.explain(model, images, "gradcam", topk=6)
    with pytest.raises(TargetError, match="either target or topk"):
        cnnlens.explain(model, images, "gradcam", topk=2, target=1)


def test_layers_by_name_module_index_and_list(images: torch.Tensor) -> None:
    model = make_model("relu")
    by_name = cnnlens.explain(model, images, "gradcam", layer="features.3")
    by_module = cnnlens.explain(model, images, "gradcam", layer=model.features[3])
    by_index = cnnlens.explain(model, images, "gradcam", layer="features[3]")
    torch.testing.assert_close(by_name.maps, by_module.maps)
    torch.testing.assert_close(by_name.maps, by_index.maps)
    assert by_name.layer == by_module.layer == "features.3"
    assert by_name.raw.shape == (3, 32, 32)  # before the pooling: full resolution
    fused = cnnlens.explain(model, images, "gradcam", layer=["features.3", "features.7"])
    assert fused.layer == "features.3+features.7"
    assert set(fused.per_layer) == {"features.3", "features.7"}
    late = cnnlens.explain(model, images, "gradcam", layer="features.7")
    torch.testing.assert_close(fused.per_layer["features.7"], late.maps)
    mean = (fused.per_layer["features.3"] + fused.per_layer["features.7"]) / 2
    torch.testing.assert_close(fused.maps, cnnlens.methods.base.normalize_maps(mean))


def test_bad_layers_name_the_candidates(images: torch.Tensor) -> None:
    model = make_model("relu")
    before = snapshot(model)
    with pytest.raises(LayerNotFoundError, match=r"'featurs\.3' not found.*features\.3"):
        cnnlens.explain(model, images, "gradcam", layer="featurs.3")
    with pytest.raises(LayerNotFoundError, match="not a submodule"):
        cnnlens.explain(model, images, "gradcam", layer=nn.Conv2d(3, 3, 1))
    with pytest.raises(LayerNotFoundError, match=r"not a \(B, C, h, w\) map"):
        cnnlens.explain(model, images, "gradcam", layer="head.0")
    pixel = [m for m in cnnlens.list_methods() if not cnnlens.get_method(m).uses_layer]
    for method in pixel[:1]:
        with pytest.raises(InputError, match="takes no layer"):
            cnnlens.explain(model, images, method, layer="features.3")
    assert_unchanged(model, before)


def test_automatic_layer_on_torchvision_models() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    assert cnnlens.explain(torchvision.models.resnet18().eval(), x).layer == "layer4"
    assert cnnlens.explain(torchvision.models.mobilenet_v3_small().eval(), x).layer == "features"
    assert cnnlens.explain(make_model("gap"), x[..., :32, :32]).layer == "features"


def test_automatic_layer_is_probed_once_per_model_and_input_shape() -> None:
    model = make_model("gap")
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    x = torch.randn(3, 3, 32, 32)
    try:
        first = cnnlens.explain(model, x, "gradcam")
        assert calls == [1, 3]  # a one-image probe, then the explained batch
        calls.clear()
        second = cnnlens.explain(model, x[:2], "gradcam")
        assert calls == [2] and second.layer == first.layer  # remembered: no probe
        calls.clear()
        cnnlens.explain(model, torch.randn(1, 3, 40, 40), "gradcam")
        assert calls == [1, 1]  # another input size is probed again
        # a replaced submodule is probed again too, and the new module is the one used
        setattr(model, first.layer, copy.deepcopy(model.get_submodule(first.layer)))
        calls.clear()
        third = cnnlens.explain(model, x, "gradcam")
        assert calls == [1, 3] and third.layer == first.layer
    finally:
        handle.remove()
    assert hook_count(model) == 0


def test_works_inside_no_grad_and_inference_mode(images: torch.Tensor) -> None:
    model = make_model("inplace")
    ref = cnnlens.explain(model, images, "gradcam")
    with torch.no_grad():
        a = cnnlens.explain(model, images, "gradcam")
    with torch.inference_mode():
        b = cnnlens.explain(model, images, "gradcam")
        c = cnnlens.explain(model, images.clone(), "gradcam")  # an inference tensor
    for exp in (a, b, c):
        torch.testing.assert_close(exp.maps, ref.maps)


def test_train_mode_model_is_explained_in_eval_and_left_in_train(images: torch.Tensor) -> None:
    model = make_model("relu").train()
    before = snapshot(model)
    a = cnnlens.explain(model, images, "gradcam")
    b = cnnlens.explain(model, images, "gradcam")  # dropout off: deterministic
    torch.testing.assert_close(a.maps, b.maps)
    assert model.training and model.head[1].training
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", ["gradcam", "saliency", "scorecam", "occlusion"])
def test_eval_mode_false_keeps_train_mode_and_leaves_batchnorm_statistics(
    images: torch.Tensor, method: str
) -> None:
    model = make_model("relu").train()
    model.head[1].p = 0.0  # dropout off, BatchNorm still in train mode (batch statistics)
    before = snapshot(model)
    seen: list[bool] = []
    handle = model.features[1].register_forward_pre_hook(lambda m, a: seen.append(m.training))
    try:
        cnnlens.explain(model, images, method, eval_mode=False)
    finally:
        handle.remove()
    assert seen and all(seen)  # BatchNorm ran in train mode, as asked ...
    assert_unchanged(model, before)  # ... and its running statistics are as they were


def test_reused_module_keeps_last_call(images: torch.Tensor) -> None:
    model = make_model("reused")
    exp = cnnlens.explain(model, images, "gradcam", layer="block")
    # reference: gradient of the score w.r.t. the block's second output, by hand
    x = images
    h = model.act(model.block(model.act(model.stem(x))))
    a2 = model.block(h).detach().requires_grad_(True)
    score = model.fc(model.act(a2).mean((2, 3)))[range(3), exp.targets].sum()
    (g,) = torch.autograd.grad(score, a2)
    ref = (g.mean((2, 3), keepdim=True) * a2).sum(1).detach()
    torch.testing.assert_close(exp.raw, ref)
    assert hook_count(model) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models(dtype: torch.dtype, images: torch.Tensor) -> None:
    model = make_model("gap")
    ref = cnnlens.explain(model, images, "gradcam", target=1)
    low = make_model("gap").to(dtype)
    try:
        exp = cnnlens.explain(low, images, "gradcam", target=1)
    except RuntimeError as err:  # some CPU builds lack half-precision convolution
        pytest.skip(f"{dtype} not supported on this device: {err}")
    assert exp.maps.dtype == torch.float32 and torch.isfinite(exp.maps).all()
    assert pearson(exp.maps, ref.maps) > 0.95
    assert all(p.dtype == dtype for p in low.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(images: torch.Tensor) -> None:
    model = make_model("inplace")
    ref = cnnlens.explain(model, images, "gradcam++")
    exp = cnnlens.explain(model.cuda(), images.cuda(), "gradcam++")
    assert exp.maps.device.type == "cuda"
    torch.testing.assert_close(exp.maps.cpu(), ref.maps, atol=1e-4, rtol=1e-3)
    model.cpu()


def test_cpu_input_on_a_model_elsewhere_returns_maps_on_the_input_device(images) -> None:
    model = make_model("gap")
    exp = cnnlens.explain(model, images, "gradcam")
    assert exp.maps.device == images.device


def test_bad_inputs() -> None:
    model = make_model("gap")
    with pytest.raises(InputError, match="x must"):
        cnnlens.explain(model, torch.zeros(32, 32), "gradcam")
    with pytest.raises(InputError, match=r"torch\.Tensor"):
        cnnlens.explain(model, [[0.0]], "gradcam")
    with pytest.raises(InputError, match="model must"):
        cnnlens.explain("resnet", torch.zeros(1, 3, 8, 8), "gradcam")
    with pytest.raises(InputError, match="empty batch"):
        cnnlens.explain(model, torch.zeros(0, 3, 8, 8), "gradcam")
    with pytest.raises(InputError, match=r"dtype torch\.uint8 \(raw 0-255 pixels\?"):
        cnnlens.explain(model, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "gradcam")
    with pytest.raises(InputError, match=r"floating-point tensor .* got dtype torch\.int64$"):
        cnnlens.explain(model, torch.zeros(1, 3, 8, 8, dtype=torch.long), "saliency")


class _ViewNet(nn.Module):
    """A classifier whose forward calls .view on a conv activation (refuses channels-last)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam", "layercam"])
def test_cam_methods_run_channels_last_on_the_cpu_with_the_same_maps(method: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    formats: list[bool] = []
    handle = model.conv1.register_forward_pre_hook(
        lambda m, a: formats.append(a[0].is_contiguous(memory_format=torch.channels_last))
    )
    try:
        fast = cnnlens.explain(model, x, method, layer="layer4", topk=2)
        assert formats and all(formats)
        formats.clear()
        plain = cnnlens.explain(model, x, method, layer="layer4", topk=2, optimize=False)
        assert formats and not any(formats)
    finally:
        handle.remove()
    torch.testing.assert_close(fast.maps, plain.maps, atol=1e-4, rtol=0)
    assert torch.equal(fast.targets, plain.targets) and hook_count(model) == 0


def test_a_model_that_refuses_channels_last_is_explained_in_the_default_layout() -> None:
    torch.manual_seed(0)
    model = _ViewNet().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="view"):
        model(x.contiguous(memory_format=torch.channels_last))
    before = snapshot(model)
    fast = cnnlens.explain(model, x, "gradcam", layer="conv")
    plain = cnnlens.explain(model, x, "gradcam", layer="conv", optimize=False)
    torch.testing.assert_close(fast.maps, plain.maps)
    assert_unchanged(model, before)
    with pytest.raises(InputError, match="optimize must be"):
        cnnlens.explain(model, x, "gradcam", optimize="yes")
