"""Hypothesis settings profiles for the whole suite (issue 9 property tests and fuzzing).

``ci`` (the default, so tests/run and CI get it): 200 examples, derandomized (the same
examples every run: a CI failure reproduces), no example database. ``dev``
(``HYPOTHESIS_PROFILE=dev``): 300 random examples, so local runs keep exploring. No deadline in either: the box
is shared and a slow example is not a failure.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)
