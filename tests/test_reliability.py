"""Reliability of the engine (issue 17): one model shared by threads, non-finite inputs,
outputs and gradients, and no cyclic garbage left by a call."""

from __future__ import annotations

import gc
import os
import threading
import warnings

import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.core.registry import preset_options
from cnnlens.errors import InputError, ModelError
from conftest import assert_unchanged, hook_count, inputs, snapshot

THREAD_METHODS = [
    "gradcam",
    "saliency",
    "guided_backprop",
    "scorecam",
    "integrated_gradients",
    "occlusion",
]
OPTIONS = preset_options(cnnlens.list_methods(), "tiny")


class BnNet(nn.Module):
    """conv-BN-ReLU twice, global average pooling, linear: deterministic in train mode (no
    dropout), and its BatchNorms fold into the convolutions in eval mode."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def bn_net(seed: int = 0, train: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = BnNet()
    with torch.no_grad():  # non-trivial running statistics, so folding changes the weights
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model.train(train)


def _explain(model: nn.Module, x: torch.Tensor, method: str) -> torch.Tensor:
    return cnnlens.explain(model, x, method, **OPTIONS.get(method, {})).maps


def _run_threads(n: int, work) -> list[BaseException]:
    """Run ``work(i)`` in ``n`` threads started together; the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as err:  # collected and asserted on by the caller
            errors.append(err)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_threads_sharing_one_model_match_serial_and_restore_it(train, two_torch_threads):
    model = bn_net(train=train)
    x = inputs(2, 16)
    serial = {m: _explain(model, x, m) for m in THREAD_METHODS}
    before = snapshot(model)
    got: dict[tuple[int, int], tuple[str, torch.Tensor]] = {}

    def work(i: int) -> None:
        for j in range(2):  # each thread runs every method, in its own order
            for k in range(len(THREAD_METHODS)):
                method = THREAD_METHODS[(i + j + k) % len(THREAD_METHODS)]
                got[(i, j * 10 + k)] = (method, _explain(model, x, method))

    assert _run_threads(4, work) == []
    assert len(got) == 4 * 2 * len(THREAD_METHODS)
    for method, maps in got.values():
        torch.testing.assert_close(maps, serial[method], atol=1e-5, rtol=1e-5)
    assert_unchanged(model, before)  # flags, requires_grad, BatchNorm buffers, no hooks
    assert all(p.requires_grad for p in model.parameters())


def test_two_models_in_two_threads(two_torch_threads):
    models = [bn_net(0), bn_net(1, train=True)]
    x = inputs(1, 16)
    serial = [_explain(m, x, "gradcam") for m in models]
    befores = [snapshot(m) for m in models]

    def work(i: int) -> None:
        for _ in range(4):
            torch.testing.assert_close(_explain(models[i], x, "gradcam"), serial[i])

    assert _run_threads(2, work) == []
    for model, before in zip(models, befores):
        assert_unchanged(model, before)


_GATE: dict[str, object] = {}


class GatedNet(BnNet):
    """A BnNet whose first forward after :func:`_arm` waits until the other thread has run
    its plain forwards: those run while cnnlens is inside its first forward of the call (for
    the fast path, where the BatchNorm-folded copy is built). The gate is module-global so
    that a copy of the model shares it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _GATE.get("armed"):
            _GATE["armed"] = False
            _GATE["inside"].set()  # type: ignore[attr-defined]
            _GATE["plain_done"].wait(10)  # type: ignore[attr-defined]
        return super().forward(x)


def _arm() -> None:
    _GATE.update(armed=True, inside=threading.Event(), plain_done=threading.Event())


def test_plain_forwards_in_another_thread_are_not_disturbed(two_torch_threads):
    """model(x) on an unrelated model (in train mode) and on the explained one, while
    Score-CAM runs in another thread: first while cnnlens is inside the first forward of its
    call (where the fast path builds its folded copy; torch.fx tracing used to patch
    ``nn.Module.__call__`` for the whole process there), then throughout two calls."""
    torch.manual_seed(0)
    explained = GatedNet().eval()
    other = bn_net(1, train=True)
    x = inputs(2, 16)
    with torch.no_grad():
        ref_other, ref_same = other(x).clone(), explained(x).clone()
    done = threading.Event()
    plain_calls = [0]

    def plain() -> None:
        with torch.no_grad():
            torch.testing.assert_close(other(x), ref_other)
            torch.testing.assert_close(explained(x), ref_same)
        plain_calls[0] += 1

    def work(i: int) -> None:
        if i == 0:
            try:
                for _ in range(2):
                    _explain(explained, x, "scorecam")
            finally:
                _GATE["plain_done"].set()  # type: ignore[attr-defined]
                done.set()
            return
        try:
            assert _GATE["inside"].wait(10)  # type: ignore[attr-defined]
            plain()
        finally:
            _GATE["plain_done"].set()  # type: ignore[attr-defined]
        while not done.is_set() or plain_calls[0] < 5:
            plain()

    _arm()
    assert _run_threads(2, work) == []
    assert plain_calls[0] >= 5
    assert hook_count(explained) == 0 and hook_count(other) == 0
    assert other.training and all(p.requires_grad for p in explained.parameters())


def test_frozen_other_mode_waits_and_nested_calls_restore() -> None:
    from cnnlens.core.capture import frozen

    model = bn_net(train=True)
    with frozen(model):  # eval mode
        assert not model.training
        with frozen(model, eval_mode=False):  # nested, other mode, same thread
            assert not model.training  # keeps each module's (eval) flag
            assert not any(p.requires_grad for p in model.parameters())
        with frozen(model):
            assert not model.training
    assert model.training and all(p.requires_grad for p in model.parameters())
    order: list[str] = []
    entered = threading.Event()

    def work(i: int) -> None:
        if i == 0:
            with frozen(model):
                entered.set()
                order.append("eval in")
                threading.Event().wait(0.2)
                order.append("eval out")
        else:
            entered.wait()
            with frozen(model, eval_mode=False):
                order.append("train in")
                assert model.training

    assert _run_threads(2, work) == []
    assert order == ["eval in", "eval out", "train in"]
    assert model.training


# ---------------------------------------------------------------------------------------------
# NaN and infinities
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", cnnlens.list_methods())
def test_non_finite_input_is_refused_by_every_method(method):
    model = bn_net()
    x = inputs(1, 16)
    x[0, 1, 3, 4] = float("nan")
    before = snapshot(model)
    with pytest.raises(InputError, match=r"x holds 1 non-finite values .*1 NaN"):
        cnnlens.explain(model, x, method, **OPTIONS.get(method, {}))
    assert_unchanged(model, before)


@pytest.mark.parametrize("fill", [float("inf"), float("nan")], ids=["one-inf", "all-nan"])
def test_infinite_or_all_nan_input_is_refused(fill):
    x = inputs(1, 16)
    if fill == float("inf"):
        x[0, 0, 0, 0] = fill
    else:
        x.fill_(fill)
    with pytest.raises(InputError, match=r"^x holds .*non-finite"):
        cnnlens.explain(bn_net(), x, "gradcam")


@pytest.mark.parametrize("method", cnnlens.list_methods())
def test_nan_weights_are_named_by_every_method(method):
    model = bn_net()
    state = model.state_dict()
    state["features.3.weight"][0, 0, 0, 0] = float("nan")  # a checkpoint with a NaN weight
    model.load_state_dict(state)
    with (
        pytest.raises(ModelError, match=r"outputs for x .*'features\.3\.weight'"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # the perturbation methods also warn of NaN scores
        cnnlens.explain(model, inputs(1, 16), method, **OPTIONS.get(method, {}))


class _NanGradient(torch.autograd.Function):
    """The identity forward, NaN backward: finite outputs, non-finite gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class NanGradNet(BnNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(_NanGradient.apply(self.features(x))), 1))


@pytest.mark.parametrize("method", ["saliency", "gradcam", "integrated_gradients"])
def test_non_finite_gradient_is_named(method):
    model = NanGradNet().eval()
    # gradcam at the layer the NaN gradient flows through (the automatic choice skips a layer
    # whose gradient is not a finite non-zero map)
    layer = {"layer": "features"} if method == "gradcam" else {}
    with pytest.raises(ModelError, match=f"^{method}: the attributions hold .* non-finite"):
        cnnlens.explain(model, inputs(1, 16), method, **OPTIONS.get(method, {}), **layer)


def test_metrics_refuse_a_nan_input():
    from cnnlens.metrics import deletion

    model = bn_net()
    x = inputs(1, 16)
    maps = torch.rand(1, 16, 16)
    x[0, 0, 5, 5] = float("nan")
    with pytest.raises(InputError, match=r"^x holds 1 non-finite"):
        deletion(model, x, maps)


# ---------------------------------------------------------------------------------------------
# Cyclic garbage
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", cnnlens.list_methods())
def test_a_call_leaves_no_cyclic_garbage(method):
    """The collector finds nothing unreachable after a call: every object a call made
    (the BatchNorm-folded copy included) is freed by reference counting."""
    model = bn_net()
    x = inputs(2, 16)
    options = OPTIONS.get(method, {})
    cnnlens.explain(model, x, method, **options)  # first call: lazy imports, caches
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        cnnlens.explain(model, x, method, **options)
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()


def test_the_layer_cache_is_bounded_and_cleared():
    from cnnlens.core import layers

    model = bn_net()
    for size in range(8, 28):  # 20 input sizes, each an automatic layer choice remembered
        cnnlens.explain(model, inputs(1, size), "gradcam")
    assert len(layers._CHOSEN[model]) == layers._MAX_SHAPES == 16
    assert (3, 27, 27, torch.float32, "cpu") in layers._CHOSEN[model]  # the newest kept
    cnnlens.clear_cache()
    assert model not in layers._CHOSEN


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_rss_stays_flat_over_300_integrated_gradients_calls():
    """300 calls of integrated gradients (its folded resnet18 copy each time) at 64x64: the
    resident memory after the last call is within 150 MB of that after the 20th, with the
    cycle collector off (issue 17 saw RSS climb from 0.8 GB to 2.3-3 GB when each call's
    torch.fx copy was left in reference cycles)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = inputs(1, 64)
    options = {"n_steps": 4, "internal_batch_size": 4}
    was = gc.isenabled()
    gc.disable()  # garbage must go by reference counting alone
    try:
        for i in range(300):
            cnnlens.explain(model, x, "integrated_gradients", **options)
            if i == 19:
                warm = _rss_mb()
        grown = _rss_mb() - warm
    finally:
        if was:
            gc.enable()
    assert grown < 150, f"RSS grew by {grown:.0f} MB over 280 calls"
