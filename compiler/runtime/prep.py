"""semi2k online-only runs: preprocessing read from files (`-F`) written by MP-SPDZ's `Fake-Offline.x`.

`Fake-Offline.x` exists only in an MP-SPDZ built with `-DINSECURE`; the runtime looks for it in the MP-SPDZ tree,
else at `$MPCVIT_FAKE_OFFLINE`. It writes `-d N` tuples of every type (about 4 KB of files per unit of N for two
parties), so N is sized from the largest count `compile.py` reports for the program; above `MAX_TUPLES` the
runner falls back to MP-SPDZ's `-v` online/offline split of a live run.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from compiler.errors import MPSPDZError
from compiler.runtime.mpspdz import MPSPDZ, ProtocolSpec

FAKE_OFFLINE = "Fake-Offline.x"
MAX_TUPLES = 500_000  # ~2 GB of preprocessing files (every type gets N)
_COUNT = re.compile(r"^\s+(\d+) (?:integer|bit) (?:triples|bits|inputs from player \d+|dabits|simple multiplications|"
                    r"multiplications|squares)\b", re.M)


def fake_offline_binary(mpspdz: MPSPDZ) -> Path:
    candidates = [mpspdz.binary(FAKE_OFFLINE)] + ([Path(os.environ["MPCVIT_FAKE_OFFLINE"])]
                                                  if os.environ.get("MPCVIT_FAKE_OFFLINE") else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MPSPDZError(f"--online-only needs {FAKE_OFFLINE}: build it with `make {FAKE_OFFLINE}` in {mpspdz.home} "
                      "(CONFIG.mine: MY_CFLAGS = -DINSECURE) or set MPCVIT_FAKE_OFFLINE to a built copy")


def tuples_needed(compile_output: str) -> int:
    """The number of tuples of each type to generate: the largest count compile.py reports, plus a margin."""
    counts = [int(m.group(1)) for m in _COUNT.finditer(compile_output)]
    return int(max(counts, default=0) * 1.1) + 1000


def generate_fake_preprocessing(mpspdz: MPSPDZ, root: Path, spec: ProtocolSpec, compile_output: str) -> int:
    """Write insecure preprocessing for `spec.parties` parties into the overlay `root`; returns the tuple count."""
    count = tuples_needed(compile_output)
    done = subprocess.run([str(fake_offline_binary(mpspdz)), str(spec.parties), "-d", str(count)], cwd=root,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise MPSPDZError(f"{FAKE_OFFLINE} {spec.parties} -d {count} failed: {(done.stdout + done.stderr)[-500:]}")
    return count
