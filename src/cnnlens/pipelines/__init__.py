"""The pipelines behind the ``cnnlens`` commands, as library calls: each a few named steps.

- :mod:`cnnlens.pipelines.explain`: explain image files or folders into PNGs,
  ``results.json`` and ``report.html`` (``cnnlens explain``);
- :mod:`cnnlens.pipelines.demo`: the whole pipeline on bundled data (``cnnlens demo``);
- :mod:`cnnlens.pipelines.options`: the option texts a user types (devices, models, method
  options, classes), parsed and checked.

``cnnlens assess`` lives in :mod:`cnnlens.assess`. The ``cli`` modules are thin typer
wrappers around these calls.
"""
