"""Flatness measures of the paper (App. A): closed-form bounds, the scale searches, one run's measurement.

``bounds`` holds eqs. 15-22, ``search`` the bisection, ``perturb`` the batched evaluation of perturbed
copies, ``flatness`` the four searches and eight measures of a model, ``run`` the measurement of a
trained run as written to ``measures.json``.
"""

from qgen.measures.flatness import MeasureSettings, flatness_measures
from qgen.measures.search import SearchResult, bisect_scale

__all__ = ["MeasureSettings", "SearchResult", "bisect_scale", "flatness_measures"]
