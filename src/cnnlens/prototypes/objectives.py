"""What activation maximization maximizes: small objective objects that add and scale.

An objective maps one forward pass (a :class:`Context`) to one value per image, shape (B,),
to be *maximized*. Objectives combine with ``+``, ``-`` and multiplication by a number::

    obj = Channel("features.3", 5) + 0.5 * ClassLogit(2) - 0.05 * TotalVariation()

Layer outputs are captured with forward hooks for exactly one optimization run
(:func:`capture_layers`); every hook is removed in ``finally``.

Image penalties (:class:`L1`, :class:`L2`, :class:`TotalVariation`) are objectives too: their
value is the penalty, so they are *subtracted*.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import frozen
from cnnlens.core.layers import resolve_layer
from cnnlens.errors import InputError, LayerNotFoundError, TargetError
from cnnlens.prototypes._util import as_index_list

LayerSpec = str | nn.Module


def _layer_key(layer: LayerSpec) -> str | int:
    return layer if isinstance(layer, str) else id(layer)


@dataclass
class Context:
    """One forward pass as the objectives see it.

    Attributes:
        image: the untransformed images in display space, (B, C, H, W) in [0, 1].
        input: what the model was given (transformed, normalized), (B, C, H, W).
        logits: the model's output for ``input``, (B, N).
        acts: captured layer outputs by dotted layer name.
        names: the dotted name each layer spec (name or module) resolved to.
    """

    image: Tensor
    input: Tensor
    logits: Tensor
    acts: dict[str, Tensor] = field(default_factory=dict)
    names: dict[str | int, str] = field(default_factory=dict)

    def activation(self, layer: LayerSpec) -> Tensor:
        """The captured output of ``layer`` in this pass."""
        name = self.names.get(_layer_key(layer))
        if name is None or name not in self.acts:
            shown = layer if isinstance(layer, str) else type(layer).__name__
            raise LayerNotFoundError(
                f"layer {shown!r} produced no tensor output in the forward pass; captured: "
                f"{', '.join(self.acts) or 'none'}"
            )
        return self.acts[name]


class Objective:
    """Base class: ``objective(ctx)`` returns one value per image, (B,), to maximize.

    Subclasses set :attr:`layers` (the layer specs whose outputs they read) and implement
    :meth:`__call__`.

    Example:
        >>> obj = Channel("features.3", 5) - 0.05 * TotalVariation()
    """

    layers: tuple[LayerSpec, ...] = ()

    def __call__(self, ctx: Context) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, (int, float)) and other == 0:  # lets sum() start at 0
            return self
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum([self, other])

    __radd__ = __add__

    def __mul__(self, weight: float) -> Objective:
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            return NotImplemented
        return Scaled(self, float(weight))

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return Scaled(self, -1.0)

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum([self, Scaled(other, -1.0)])

    def __repr__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """A short human-readable name (used for captions)."""
        return type(self).__name__


class Sum(Objective):
    """The sum of several objectives."""

    def __init__(self, terms: Sequence[Objective]):
        flat: list[Objective] = []
        for term in terms:
            flat.extend(term.terms if isinstance(term, Sum) else [term])
        self.terms = flat
        self.layers = tuple(spec for term in flat for spec in term.layers)

    def __call__(self, ctx: Context) -> Tensor:
        return torch.stack([term(ctx) for term in self.terms]).sum(0)

    def describe(self) -> str:
        text = self.terms[0].describe()
        for term in self.terms[1:]:
            if isinstance(term, Scaled) and term.weight < 0:
                text += f" - {Scaled(term.objective, -term.weight).describe()}"
            else:
                text += f" + {term.describe()}"
        return text


class Scaled(Objective):
    """An objective times a constant weight."""

    def __init__(self, objective: Objective, weight: float):
        if isinstance(objective, Scaled):
            objective, weight = objective.objective, weight * objective.weight
        self.objective = objective
        self.weight = weight
        self.layers = objective.layers

    def __call__(self, ctx: Context) -> Tensor:
        return self.weight * self.objective(ctx)

    def describe(self) -> str:
        return f"{self.weight:g}*{self.objective.describe()}"


def _per_image(indices: list[int], batch: int, what: str, device: torch.device) -> Tensor:
    """One index per image: a single index is shared, a list must have one per image."""
    if len(indices) == 1:
        return torch.full((batch,), indices[0], dtype=torch.long, device=device)
    if len(indices) != batch:
        raise InputError(
            f"{what} has {len(indices)} entries but the batch has {batch} images; give one "
            "per image or a single one"
        )
    return torch.tensor(indices, dtype=torch.long, device=device)


def _check_range(idx: Tensor, size: int, what: str, err: type[Exception] = InputError) -> None:
    bad = idx[(idx < 0) | (idx >= size)]
    if bad.numel():
        raise err(f"{what} {int(bad[0])} is out of range; expected 0..{size - 1} ({size} in all)")


class ClassLogit(Objective):
    """The logit (pre-softmax score) of a class (Erhan et al., 2009; Simonyan et al., 2014).

    $$f(x) = z_c(x)$$

    Args:
        target: one class index for every image, or one per image.
    """

    def __init__(self, target: int | Sequence[int]):
        self.target = as_index_list(target, "target")

    def _targets(self, ctx: Context) -> Tensor:
        idx = _per_image(self.target, ctx.logits.shape[0], "target", ctx.logits.device)
        _check_range(idx, ctx.logits.shape[1], "target class", TargetError)
        return idx

    def __call__(self, ctx: Context) -> Tensor:
        idx = self._targets(ctx)
        return ctx.logits.gather(1, idx[:, None])[:, 0].float()

    def describe(self) -> str:
        return f"logit[{_short(self.target)}]"


class ClassProbability(ClassLogit):
    """The softmax probability of a class, or its logarithm with ``log=True``.

    $$f(x) = \\log p(c \\mid x) = z_c - \\log \\sum_k e^{z_k}$$

    The log-probability pushes the class up *against* the others (a logit can grow while the
    others grow too), so it is the objective of choice when a probability is the goal.
    """

    def __init__(self, target: int | Sequence[int], *, log: bool = False):
        super().__init__(target)
        self.log = log

    def __call__(self, ctx: Context) -> Tensor:
        idx = self._targets(ctx)
        logp = torch.log_softmax(ctx.logits.float(), dim=1).gather(1, idx[:, None])[:, 0]
        return logp if self.log else logp.exp()

    def describe(self) -> str:
        return f"{'logp' if self.log else 'p'}[{_short(self.target)}]"


class _LayerObjective(Objective):
    def __init__(self, layer: LayerSpec):
        self.layer = layer
        self.layers = (layer,)

    def _act(self, ctx: Context) -> Tensor:
        return ctx.activation(self.layer).float()

    @property
    def layer_name(self) -> str:
        return self.layer if isinstance(self.layer, str) else type(self.layer).__name__


class Channel(_LayerObjective):
    """The mean activation of one channel of a layer (Olah et al., 2017, Distill).

    $$f(x) = \\frac{1}{hw} \\sum_{i,j} A^{(l)}_{c,i,j}(x)$$

    For a (B, C) output (a linear layer) the value is the unit itself.

    Args:
        layer: dotted layer name or the module.
        channel: one channel for every image, or one per image.
    """

    def __init__(self, layer: LayerSpec, channel: int | Sequence[int]):
        super().__init__(layer)
        self.channel = as_index_list(channel, "channel")

    def _pick(self, ctx: Context) -> Tensor:
        act = self._act(ctx)
        if act.dim() < 2:
            raise InputError(f"layer {self.layer_name!r} output has shape {tuple(act.shape)}")
        idx = _per_image(self.channel, act.shape[0], "channel", act.device)
        _check_range(idx, act.shape[1], f"channel of layer {self.layer_name!r}: index")
        rows = torch.arange(act.shape[0], device=act.device)
        return act[rows, idx]  # (B, ...) the chosen channel of each image

    def __call__(self, ctx: Context) -> Tensor:
        chosen = self._pick(ctx)
        return chosen.flatten(1).mean(1) if chosen.dim() > 1 else chosen

    def describe(self) -> str:
        return f"{self.layer_name}:{_short(self.channel)}"


class Neuron(Channel):
    """One unit: a channel at one spatial position (the centre by default).

    $$f(x) = A^{(l)}_{c,y,x}(x)$$
    """

    def __init__(
        self,
        layer: LayerSpec,
        channel: int | Sequence[int],
        y: int | None = None,
        x: int | None = None,
    ):
        super().__init__(layer, channel)
        self.y, self.x = y, x

    def __call__(self, ctx: Context) -> Tensor:
        chosen = self._pick(ctx)
        if chosen.dim() != 3:
            raise InputError(
                f"Neuron needs a spatial (B, C, h, w) output; layer {self.layer_name!r} gives "
                f"{tuple(ctx.activation(self.layer).shape)}"
            )
        h, w = chosen.shape[1:]
        y = h // 2 if self.y is None else self.y
        x = w // 2 if self.x is None else self.x
        if not (0 <= y < h and 0 <= x < w):
            raise InputError(
                f"neuron position (y={y}, x={x}) is outside layer {self.layer_name!r}'s {h}x{w} map"
            )
        return chosen[:, y, x]

    def describe(self) -> str:
        return f"{self.layer_name}:{_short(self.channel)}@({self.y},{self.x})"


class Direction(_LayerObjective):
    """A direction in a layer's channel space, averaged over positions (Olah et al., 2018).

    $$f(x) = \\frac{1}{hw} \\sum_{i,j} \\langle A^{(l)}_{:,i,j}(x), v / \\lVert v \\rVert \\rangle$$
    """

    def __init__(self, layer: LayerSpec, vector: Tensor | Sequence[float]):
        super().__init__(layer)
        v = torch.as_tensor(vector, dtype=torch.float32).reshape(-1)
        norm = v.norm()
        if v.numel() == 0 or not torch.isfinite(norm) or norm == 0:
            raise InputError("direction vector must be non-empty, finite and non-zero")
        self.vector = v / norm

    def __call__(self, ctx: Context) -> Tensor:
        act = self._act(ctx)
        if act.shape[1] != self.vector.numel():
            raise InputError(
                f"direction has {self.vector.numel()} entries but layer {self.layer_name!r} has "
                f"{act.shape[1]} channels"
            )
        v = self.vector.to(act.device).view(1, -1, *([1] * (act.dim() - 2)))
        return (act * v).sum(1).flatten(1).mean(1) if act.dim() > 2 else (act * v).sum(1)

    def describe(self) -> str:
        return f"{self.layer_name}:direction"


class Diversity(_LayerObjective):
    """Diversity across the batch: minus the mean cosine similarity of each image's Gram
    matrix of a layer to the other images' (Olah et al., 2017, "Feature Visualization").

    $$f(x_b) = -\\frac{1}{B-1} \\sum_{b' \\neq b}
        \\cos\\big(G(A^{(l)}(x_b)), G(A^{(l)}(x_{b'}))\\big),
      \\quad G(A) = A A^\\top / hw$$

    With one image the value is 0.
    """

    def __call__(self, ctx: Context) -> Tensor:
        act = self._act(ctx)
        b = act.shape[0]
        if b < 2:
            return act.new_zeros(b)
        flat = act.flatten(2)
        gram = flat @ flat.transpose(1, 2) / flat.shape[2]
        g = F.normalize(gram.flatten(1), dim=1)
        sim = g @ g.T
        return -(sim.sum(1) - sim.diagonal()) / (b - 1)

    def describe(self) -> str:
        return f"diversity({self.layer_name})"


class L1(Objective):
    """Mean absolute deviation of the display image from ``center`` (a penalty: subtract it).

    $$P(x) = \\frac{1}{CHW} \\sum |x - c|$$
    """

    def __init__(self, center: float = 0.5):
        self.center = center

    def __call__(self, ctx: Context) -> Tensor:
        return (ctx.image - self.center).abs().flatten(1).mean(1)


class L2(L1):
    """Root mean square deviation of the display image from ``center`` (a penalty).

    $$P(x) = \\sqrt{\\frac{1}{CHW} \\sum (x - c)^2}$$
    """

    def __call__(self, ctx: Context) -> Tensor:
        return (ctx.image - self.center).pow(2).flatten(1).mean(1).add(1e-12).sqrt()


class TotalVariation(Objective):
    """Anisotropic total variation of the display image (Mahendran & Vedaldi, 2015), a
    penalty.

    $$P(x) = \\frac{1}{CHW} \\sum_{c,i,j} |x_{c,i+1,j} - x_{c,i,j}| + |x_{c,i,j+1} - x_{c,i,j}|$$
    """

    def __call__(self, ctx: Context) -> Tensor:
        img = ctx.image
        dy = (img[:, :, 1:, :] - img[:, :, :-1, :]).abs().flatten(1).sum(1)
        dx = (img[:, :, :, 1:] - img[:, :, :, :-1]).abs().flatten(1).sum(1)
        return (dy + dx) / img[0].numel()


def _short(indices: list[int]) -> str:
    return str(indices[0]) if len(indices) == 1 else ",".join(map(str, indices))


@contextmanager
def capture_layers(
    model: nn.Module, layers: Sequence[LayerSpec]
) -> Iterator[tuple[dict[str, Tensor], dict[str | int, str]]]:
    """Forward hooks recording the outputs of ``layers`` (resolved by dotted name).

    Yields ``(acts, names)``: the dict the hooks fill on every forward, and the dotted name
    each spec resolved to. Hooks are removed in ``finally``. A module that runs twice keeps its
    last output; a tuple output keeps its first tensor.
    """
    acts: dict[str, Tensor] = {}
    names: dict[str | int, str] = {}
    resolved: dict[str, nn.Module] = {}
    for spec in layers:
        name, module = resolve_layer(model, spec)
        names[_layer_key(spec)] = name
        resolved[name] = module
    handles = []
    try:
        for name, module in resolved.items():

            def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
                if isinstance(out, (tuple, list)):
                    out = next((o for o in out if isinstance(o, Tensor)), None)
                if isinstance(out, Tensor):
                    acts[name] = out

            handles.append(module.register_forward_hook(hook))
        yield acts, names
    finally:
        for handle in handles:
            handle.remove()


def evaluate(
    model: nn.Module, objective: Objective, x: Tensor, *, image: Tensor | None = None
) -> Tensor:
    """The objective's values for a batch ``x`` the model takes as is (already normalized).

    Runs one forward pass without gradients (model frozen, hooks removed afterwards); use it
    to measure, e.g., a channel's mean activation over a test set. ``image`` (display space)
    feeds image penalties; it defaults to ``x``.

    Returns:
        float32 tensor (B,) on ``x``'s device.
    """
    with (
        frozen(model),
        torch.no_grad(),
        capture_layers(model, objective.layers) as (acts, names),
    ):
        logits = model(x)
        ctx = Context(image=x if image is None else image, input=x, logits=logits)
        ctx.acts, ctx.names = acts, names
        return objective(ctx).float()
