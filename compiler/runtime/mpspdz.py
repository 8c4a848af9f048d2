"""Locating a built MP-SPDZ: `MP_SPDZ_HOME`, else `third_party/MP-SPDZ` beside the package."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from compiler.errors import MPSPDZError
from compiler.lowering.profiles import ALIASES, PROTOCOLS as LOWERING_PROTOCOLS

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


def find_mpspdz() -> MPSPDZ:
    """Find MP-SPDZ (which party binaries a protocol needs is `check_protocol_ready`'s business)."""
    home = mpspdz_home()
    if home is None:
        where = os.environ.get("MP_SPDZ_HOME") or f"{REPO_FALLBACK} (MP_SPDZ_HOME is not set)"
        raise MPSPDZError(
            f"MP-SPDZ not found at {where}: build MP-SPDZ (commit {PINNED_COMMIT[:8]}) and set MP_SPDZ_HOME "
            "to its directory; see third_party/MP-SPDZ/README.md"
        )
    return MPSPDZ(home)


@dataclass(frozen=True)
class ProtocolSpec:
    """How to compile and start one MP-SPDZ protocol (flags checked against 3a0a7b1d's `Scripts/*.sh`)."""

    name: str          # mpcvit's name
    compile_name: str  # `./compile.py -E <compile_name>`
    binary: str
    parties: int
    pass_n: bool       # the binary takes `-N <parties>`
    needs_ssl: bool    # 3-party protocols talk over TLS with Player-Data/P<i>.pem

    def party_command(self, index: int, port_base: int, program: str, extra: tuple[str, ...] = ()) -> list[str]:
        count = ["-N", str(self.parties)] if self.pass_n else []
        # `-OF .`: every party prints to stdout (by default only party 0 does; party 1 holds the revealed logits)
        return [f"./{self.binary}", *count, "-h", "localhost", "-pn", str(port_base), "-OF", ".", *extra,
                str(index), program]


# Names, `-E` names, binaries and party counts come from the lowering's protocol profiles (one source of truth);
# the runtime adds how the binary is started: replicated-ring-party.x has no `-N`, 3-party protocols use TLS.
PROTOCOLS: dict[str, ProtocolSpec] = {
    name: ProtocolSpec(name, spec.mpspdz, spec.binary, spec.n_parties, pass_n=name != "replicated-ring",
                       needs_ssl=spec.n_parties > 2)
    for name, spec in LOWERING_PROTOCOLS.items()
}


def protocol_spec(name: str) -> ProtocolSpec:
    spec = PROTOCOLS.get(ALIASES.get(name, name))
    if spec is None:
        raise MPSPDZError(f"unknown protocol {name!r}: use one of {', '.join(PROTOCOLS)}")
    return spec


def check_protocol_ready(mpspdz: MPSPDZ, spec: ProtocolSpec) -> None:
    """Stop with what exactly is missing: the party binary or the parties' SSL certificates."""
    if not mpspdz.binary(spec.binary).is_file():
        raise MPSPDZError(f"MP-SPDZ at {mpspdz.home} lacks {spec.binary} (needed for {spec.name}): "
                          f"run `make {spec.binary}` there")
    if spec.needs_ssl:
        missing = [f"P{i}.pem" for i in range(spec.parties) if not (mpspdz.home / "Player-Data" / f"P{i}.pem").is_file()]
        if missing:
            raise MPSPDZError(f"{spec.name} needs SSL certificates {', '.join(missing)} in {mpspdz.home}/Player-Data: "
                              f"run `Scripts/setup-ssl.sh {spec.parties}` in {mpspdz.home}")


def mpspdz_commit(mpspdz: MPSPDZ) -> str | None:
    """The checked-out commit of the MP-SPDZ tree (None when it is not a git checkout, e.g. a release archive)."""
    head = mpspdz.home / ".git" / "HEAD"
    if not head.is_file():
        return None
    ref = head.read_text().strip()
    if not ref.startswith("ref: "):
        return ref
    ref_file = mpspdz.home / ".git" / ref[5:]
    if ref_file.is_file():
        return ref_file.read_text().strip()
    packed = mpspdz.home / ".git" / "packed-refs"
    for line in packed.read_text().splitlines() if packed.is_file() else []:
        if line.endswith(" " + ref[5:]):
            return line.split()[0]
    return None


def mpspdz_release(mpspdz: MPSPDZ) -> str | None:
    """The newest release named in the tree's ``CHANGELOG.md`` (``## 0.4.2 (Dec 24, 2025)`` -> ``0.4.2``), or None.

    A tree unpacked from a source archive has no ``.git``; its changelog still says which release it is (or
    follows: MP-SPDZ commits between releases without a changelog entry, so this is a lower bound)."""
    changelog = mpspdz.home / "CHANGELOG.md"
    if not changelog.is_file():
        return None
    for line in changelog.read_text(errors="replace").splitlines():
        match = re.match(r"##\s+v?(\d+\.\d+(?:\.\d+)?)\b", line)
        if match:
            return match.group(1)
    return None


def mpspdz_version(mpspdz: MPSPDZ) -> dict[str, str | None]:
    """What is known of the tree's version, for results files: ``commit`` (git only, else None), ``release``
    (CHANGELOG.md, else None) and ``version``, the most precise of the two or ``"unknown"``."""
    commit, release = mpspdz_commit(mpspdz), mpspdz_release(mpspdz)
    version = f"commit {commit}" if commit else f"release {release} or later" if release else "unknown"
    return {"commit": commit, "release": release, "version": version}
