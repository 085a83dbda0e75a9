"""Shared test configuration."""

from __future__ import annotations

import os

from hypothesis import settings

# Deterministic, CI-sized property tests.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
