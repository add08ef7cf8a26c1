"""Hypothesis settings for the domain tests.

Under mutation testing (mutmut sets ``MUTANT_UNDER_TEST``) the property tests run
derandomized and without the example database, so a mutant is killed or not the same way on
every run (see docs/testing.md).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None)
if os.environ.get("MUTANT_UNDER_TEST"):
    settings.load_profile("mutation")
