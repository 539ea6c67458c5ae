"""The reproduction report: every published number beside ours, and the paper's claims as explicit checks.

Inputs are files only: the paper's Tables 1-4 transcribed into ``workflow/resources/paper/table*.csv`` and
its known problems (``notes.yaml``) (:mod:`qgen.report.paper`); whichever of our summaries exist,
``results/summary/<name>.csv`` (:mod:`qgen.report.values`). Both sides become :class:`~qgen.report.values.
Value` records keyed by (source, dataset, model, precision, quantity, detail), so a published cell and ours
meet by key (:mod:`qgen.report.compare`) and each claim check (:mod:`qgen.report.claims`) runs unchanged on
the paper's numbers and on ours. :mod:`qgen.report.render` fills the Markdown and HTML templates.
"""
