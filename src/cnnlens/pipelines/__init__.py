"""The pipelines behind the ``cnnlens`` commands, as library calls: each a few named steps.

- :mod:`cnnlens.pipelines.explain`: explain image files or folders into PNGs,
  ``results.json`` and ``report.html`` (``cnnlens explain``);
- :mod:`cnnlens.pipelines.demo`: the whole pipeline on bundled data (``cnnlens demo``);
- :mod:`cnnlens.pipelines.train`: train on a named dataset, evaluate a checkpoint
  (``cnnlens train``, ``cnnlens evaluate``);
- :mod:`cnnlens.pipelines.prototype`: class prototypes and activation maximization into a
  folder (``cnnlens prototype``, ``cnnlens visualize``);
- :mod:`cnnlens.pipelines.summary`: the layer summary of a model name or checkpoint
  (``cnnlens summary``);
- :mod:`cnnlens.pipelines.options`: the option texts a user types (devices, models, method
  options, classes, output folders), parsed and checked.

``cnnlens assess`` lives in :mod:`cnnlens.assess`; ``cnnlens report`` is
:func:`cnnlens.report.build_report`. The ``cli`` modules are thin typer wrappers around
these calls: they parse, call and print.
"""
