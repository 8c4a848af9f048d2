"""Shared fixtures. Real-engine tests use `mpspdz`, which skips (never fakes) without a built MP-SPDZ."""
from __future__ import annotations

import pytest

from compiler.errors import MPSPDZError
from compiler.runtime.mpspdz import MPSPDZ, find_mpspdz


@pytest.fixture(scope="session")
def mpspdz() -> MPSPDZ:
    try:
        return find_mpspdz()
    except MPSPDZError as exc:
        pytest.skip(str(exc))
