"""qgen: a reproducible pipeline for *QGen: On the Ability to Generalize in Quantization Aware Training*.

Modules, one job each: ``data`` (dataset registry), ``models`` (model registry), ``quant`` (LSQ weight
quantization), ``train`` (the training loop), ``experiments`` (the run table expanded from the config),
``tables`` (LaTeX tables from result files) and ``cli`` (the ``qgen`` command).
"""

__version__ = "0.1.0"
