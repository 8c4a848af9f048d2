"""Locating a built MP-SPDZ: `MP_SPDZ_HOME`, else `third_party/MP-SPDZ` beside the package."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from compiler.errors import MPSPDZError

PINNED_COMMIT = "3a0a7b1d5e80e9f7e1b1ce76ae8b8a43931e80f4"
REPO_FALLBACK = Path(__file__).resolve().parents[2] / "third_party" / "MP-SPDZ"


@dataclass(frozen=True)
class MPSPDZ:
    home: Path

    @property
    def compile_py(self) -> Path:
        return self.home / "compile.py"

    def binary(self, name: str) -> Path:
        return self.home / name


def mpspdz_home() -> Path | None:
    """The MP-SPDZ directory to use, or None when neither place holds a checkout with `compile.py`."""
    env = os.environ.get("MP_SPDZ_HOME")
    for candidate in ([Path(env)] if env else []) + [REPO_FALLBACK]:
        if (candidate / "compile.py").is_file():
            return candidate.resolve()
    return None


def find_mpspdz(binaries: tuple[str, ...] = ()) -> MPSPDZ:
    """Find MP-SPDZ and check that `binaries` (e.g. ``("replicated-ring-party.x",)``) are built."""
    home = mpspdz_home()
    if home is None:
        where = os.environ.get("MP_SPDZ_HOME") or f"{REPO_FALLBACK} (MP_SPDZ_HOME is not set)"
        raise MPSPDZError(
            f"MP-SPDZ not found at {where}: build MP-SPDZ (commit {PINNED_COMMIT[:8]}) and set MP_SPDZ_HOME "
            "to its directory; see third_party/MP-SPDZ/README.md"
        )
    missing = [b for b in binaries if not (home / b).is_file()]
    if missing:
        raise MPSPDZError(
            f"MP-SPDZ at {home} lacks {', '.join(missing)}: run `make {' '.join(missing)}` there"
        )
    return MPSPDZ(home)
