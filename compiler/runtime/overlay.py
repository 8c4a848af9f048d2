"""A private MP-SPDZ working directory, so that runs never write into the user's tree and never collide.

MP-SPDZ's `compile.py` and party binaries use paths relative to the current directory (`Programs/`,
`Player-Data/`), and the binaries find `libSPDZ.so` through their rpath. An overlay is a temp directory with
symlinks to the tree's `compile.py`, `Compiler/` and binaries, a fresh `Programs/Source/` and a `Player-Data/`
holding links to the tree's SSL certificates plus this run's input files.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from compiler.runtime.mpspdz import MPSPDZ, ProtocolSpec, make_fifos

PROGRAM_DIRS = ("Source", "Bytecode", "Schedules", "Public-Input", "Functions")


def make_overlay(mpspdz: MPSPDZ, root: Path, spec: ProtocolSpec, program: Path) -> Path:
    """Populate `root` as an overlay for running `program` (an `.mpc` file) under `spec`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("compile.py", "Compiler", *spec.binaries):
        (root / name).symlink_to(mpspdz.home / name)
    for sub in PROGRAM_DIRS:
        (root / "Programs" / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(program, root / "Programs" / "Source" / program.name)
    player_data = root / "Player-Data"
    player_data.mkdir(exist_ok=True)
    for cert in (mpspdz.home / "Player-Data").iterdir():
        if cert.suffix in (".pem", ".key", ".0"):  # certificates, keys and their c_rehash links
            (player_data / cert.name).symlink_to(cert.resolve())
    make_fifos(root, spec)
    return root


def install_inputs(root: Path, inputs: dict[str, Path]) -> None:
    """Copy each private input file to `Player-Data/<name>` (MP-SPDZ's name, e.g. `Input-Binary-P1-0`), replacing
    the previous batch's."""
    for name, source in inputs.items():
        shutil.copy(source, root / "Player-Data" / name)
