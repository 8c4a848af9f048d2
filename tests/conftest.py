"""Shared fixtures. Real-engine tests use `mpspdz`, which skips (never fakes) without a built MP-SPDZ."""
from __future__ import annotations

import os

import pytest

# idle OpenMP threads sleep rather than spin (set before torch loads): spinning made tiny CPU training ~10x slower
# on the shared 2-core machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from compiler.errors import MPSPDZError
from compiler.runtime.mpspdz import MPSPDZ, find_mpspdz


@pytest.fixture(scope="session")
def mpspdz() -> MPSPDZ:
    try:
        return find_mpspdz()
    except MPSPDZError as exc:
        pytest.skip(str(exc))
