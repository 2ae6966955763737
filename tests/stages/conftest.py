"""Fixtures of the stage tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stages._interpret import build_indexes


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """Feature indexes of two dictionaries over a store with planted features (``_interpret.build_indexes``)."""
    return build_indexes(tmp_path_factory.mktemp("interpret-cli"))
