"""Hypothesis settings for the domain tests.

Under mutation testing (mutmut sets ``MUTANT_UNDER_TEST``) the property tests run
derandomized and without the example database, so a mutant is killed or not the same way on
every run, and without shrinking a failing example (a killed mutant needs no minimal example;
shrinking would take longer than the run). See docs/testing.md.
"""

from __future__ import annotations

import os

from hypothesis import Phase, settings

settings.register_profile(
    "mutation",
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    report_multiple_bugs=False,
)
if os.environ.get("MUTANT_UNDER_TEST"):
    settings.load_profile("mutation")
