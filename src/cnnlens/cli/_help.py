"""Help text generated from the registries: ``--method``/``--methods``, ``--model`` and
``--dataset`` list their valid names, and every value prints as a word (``N``, ``PATH``,
``METHOD``, ``K=V``) rather than typer's ``<list[str]>`` (issue 18)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# the value word of an option, by its long name; other options get one from their type
_WORDS = {
    "--method": "METHOD",
    "--methods": "METHOD,...",
    "--metrics": "METRIC,...",
    "--model": "NAME",
    "--dataset": "NAME",
    "--option": "K=V",
    "--dataset-option": "K=V",
    "--layer": "LAYER",
    "--target-name": "CLASS",
    "--weights": "WEIGHTS",
    "--device": "DEVICE",
    "--stop-at": "P",
    "--target-from": "label|predicted",
    "--out": "PATH",
}
_TYPE_WORDS = {"int": "N", "float": "X", "Path": "PATH", "bool": ""}


def _methods() -> str:
    from cnnlens import list_methods

    return "Methods: " + ", ".join(list_methods()) + "."


def _models() -> str:
    from cnnlens.models import list_models

    vision = list_models("torchvision")
    return (
        "Models: " + ", ".join(list_models("cnnlens"))
        + f", or one of {len(vision)} torchvision classifiers ("
        + ", ".join(n for n in vision if n in {"resnet18", "resnet50", "vgg16", "densenet121",
                                              "mobilenet_v3_small", "convnext_tiny"})
        + ", ...)."
    )  # fmt: skip


def _datasets() -> str:
    from cnnlens.data.datasets import list_datasets

    return "Datasets: " + ", ".join(list_datasets()) + "."


_CHOICES: dict[str, Callable[[], str]] = {
    "--method": _methods,
    "--methods": _methods,
    "--model": _models,
    "--dataset": _datasets,
}


def _bare_type(param: Any) -> str:
    bare = param.bare_type() if hasattr(param, "bare_type") else ""
    return bare[5:-1] if bare.startswith("list[") else bare


def _word(param: Any) -> str:
    long = next((o for o in param.opts if o.startswith("--")), "")
    if long in _WORDS:
        return _WORDS[long]
    bare = _bare_type(param)
    if bare in _TYPE_WORDS:
        return _TYPE_WORDS[bare]
    return (param.name or "VALUE").upper()


def tidy(command: Any, choices: bool) -> Any:
    """Give every parameter of ``command`` (a click command, and its sub-commands) a word as
    metavar; with ``choices``, append the registered names to the help of the options in
    ``_CHOICES``."""
    cache: dict[str, str] = {}
    commands: list[Any] = [command]
    while commands:
        cmd = commands.pop()
        commands += list(getattr(cmd, "commands", {}).values())
        help_option = cmd.get_help_option(cmd.context_class(cmd, **cmd.context_settings))
        for param in [*cmd.params, *([help_option] if help_option is not None else [])]:
            if getattr(param, "param_type_name", "") == "argument":
                param.metavar = param.metavar or _word(param)
                param.display_type_rich = lambda ctx: None  # the name says it already
                continue
            param.metavar = "" if getattr(param, "is_flag", False) else _word(param)
            long = next((o for o in param.opts if o in _CHOICES), None)
            if choices and long is not None:
                if long not in cache:
                    cache[long] = _CHOICES[long]()
                param.help = f"{param.help or ''} {cache[long]}".strip()
    return command
