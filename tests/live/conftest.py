"""Fixtures of the live tests: loopback emulator processes shared per module.

Every server binds 127.0.0.1 on a kernel-chosen port; child emulators are
stopped by the fixtures (and die with the test process on Linux).
"""
from __future__ import annotations

import pytest
from live_helpers import TINY, restore

from live.emulator.spawn import spawn


@pytest.fixture(scope="module")
def two_emulators():
    """Two cpu-tiny emulator processes shared by a test module."""
    with spawn(2, TINY) as urls:
        yield urls


@pytest.fixture
def emulators(two_emulators):
    """The module's two emulators, with faults cleared and engines reset for each test."""
    for u in two_emulators:
        restore(u)
    yield two_emulators
    for u in two_emulators:
        restore(u)
