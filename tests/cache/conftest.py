"""Fixtures shared by the cache tests."""

from __future__ import annotations

import pytest

from .helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand (``clock.now += 10``)."""
    return FakeClock()
