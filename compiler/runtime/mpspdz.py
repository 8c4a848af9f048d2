"""Locating a built MP-SPDZ: `MP_SPDZ_HOME`, else `third_party/MP-SPDZ` beside the package."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from itertools import product
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
    parties: int       # processes of `binary`; party 0 holds the weights, party 1 the images and prints outputs
    pass_n: bool       # the binary takes `-N <parties>`
    needs_ssl: bool    # protocols of 3 or more parties talk over TLS with Player-Data/P<i>.pem
    prep_binary: str | None = None  # trio/astra: `prep_parties` processes feed the online parties through FIFOs
    prep_parties: int = 0
    needs_softspoken: bool = False  # see check_protocol_ready
    run_extra: tuple[str, ...] = ()  # the lowering profile's run-time flags of `binary` (e.g. dealer: -d -b 100000)

    @property
    def processes(self) -> int:
        return self.parties + self.prep_parties

    @property
    def binaries(self) -> tuple[str, ...]:
        return (self.binary,) + ((self.prep_binary,) if self.prep_binary else ())

    def party_command(self, index: int, port_base: int, program: str, extra: tuple[str, ...] = ()) -> list[str]:
        count = ["-N", str(self.parties)] if self.pass_n else []
        # `-OF .`: every party prints to stdout (by default only party 0 does; party 1 holds the revealed logits)
        return [f"./{self.binary}", *count, "-h", "localhost", "-pn", str(port_base), "-OF", ".", *self.run_extra,
                *extra, str(index), program]

    def launch_commands(self, port_base: int, program: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
        """Every process of one execution, online parties first (index i = party i), then the preprocessing
        parties on ports ``port_base + parties + 1 ...`` (as `Scripts/astra-common.sh`: its own port range)."""
        online = [self.party_command(i, port_base, program, extra) for i in range(self.parties)]
        prep_base = port_base + self.parties + 1
        return online + [[f"./{self.prep_binary}", "-h", "localhost", "-pn", str(prep_base), str(i), program]
                         for i in range(self.prep_parties)]

    def process_names(self) -> list[str]:
        return ([f"{self.binary} party {i}" for i in range(self.parties)]
                + [f"{self.prep_binary} party {i}" for i in range(self.prep_parties)])


# Names, `-E` names, binaries and party counts come from the lowering's protocol profiles (one source of truth);
# the runtime adds how a binary is started: only semi2k, dealer-ring and hemi take `-N` (their `--help` lists it).
PROTOCOLS: dict[str, ProtocolSpec] = {
    name: ProtocolSpec(name, spec.mpspdz, spec.binary, spec.n_parties, pass_n=name in ("semi2k", "dealer", "hemi"),
                       needs_ssl=spec.n_parties + spec.prep_parties > 2, prep_binary=spec.prep_binary,
                       prep_parties=spec.prep_parties, needs_softspoken=spec.needs_softspoken, run_extra=spec.run_extra)
    for name, spec in LOWERING_PROTOCOLS.items()
}
# a trio/astra preprocessing party i hands party i's correlated randomness to online party i through FIFOs in
# Player-Data/3-<protocol>-<domain>/ (`Scripts/astra-common.sh` makes them: threads 0..100, these domains)
FIFO_DOMAINS = ("R-64", "B-64", "2-40", "2-128")
FIFO_THREADS = 101


def make_fifos(root: Path, spec: ProtocolSpec) -> None:
    """Create the FIFOs through which `spec`'s preprocessing parties feed its online parties (none for others)."""
    if spec.prep_binary is None:
        return
    for domain in FIFO_DOMAINS:
        folder = root / "Player-Data" / f"3-{spec.compile_name}-{domain}"
        folder.mkdir(parents=True, exist_ok=True)
        for kind, eda, party, thread in product(("Protocol", "Outputs"), ("edaBits-", ""), range(spec.prep_parties),
                                                range(FIFO_THREADS)):
            path = folder / f"{kind}-{eda}P{party}-T{thread}"
            if not path.exists():
                os.mkfifo(path)


def protocol_spec(name: str) -> ProtocolSpec:
    spec = PROTOCOLS.get(ALIASES.get(name, name))
    if spec is None:
        raise MPSPDZError(f"unknown protocol {name!r}: use one of {', '.join(PROTOCOLS)}")
    return spec


def kos_build(mpspdz: MPSPDZ) -> bool:
    """Whether the tree was built with the older OT extension (`USE_KOS = 1` in CONFIG.mine, for offline builds)."""
    config = mpspdz.home / "CONFIG.mine"
    text = config.read_text(errors="replace") if config.is_file() else ""
    return re.search(r"^\s*USE_KOS\s*[:+]?=\s*1\b", text, re.M) is not None


def check_protocol_ready(mpspdz: MPSPDZ, spec: ProtocolSpec, expected: dict | None = None) -> None:
    """Stop with what exactly is missing: a build that cannot run the protocol, a binary or SSL certificates.

    Checked before anything starts (not after a hang): a USE_KOS build cannot run `needs_softspoken` protocols;
    the message then ends with the cost model's ``expected`` figures of the program (manifest ``expected``)."""
    if spec.needs_softspoken and kos_build(mpspdz):
        estimate = "" if not expected else (
            f"; the cost model expects {expected['bytes_all'] / 1e9:,.1f} GB sent by all parties "
            f"({expected['offline_bytes_all'] / 1e9:,.1f} GB preprocessing), {expected['rounds']:,.0f} rounds, "
            f"~{expected['latency_lan_s']:,.0f} s on a LAN")
        raise MPSPDZError(f"{spec.name} cannot run with the MP-SPDZ at {mpspdz.home}: it was built with USE_KOS = 1 "
                          f"in CONFIG.mine, whose OT extension stops {spec.name}'s preprocessing with 'Fatal error in "
                          f"OT thread: Case not implemented'; rebuild it without USE_KOS (needs libOTe){estimate}")
    for binary in spec.binaries:
        if not mpspdz.binary(binary).is_file():
            raise MPSPDZError(f"MP-SPDZ at {mpspdz.home} lacks {binary} (needed for {spec.name}): "
                              f"run `make {binary}` there")
    if spec.needs_ssl:
        count = max(spec.parties, spec.prep_parties)
        missing = [f"P{i}.pem" for i in range(count) if not (mpspdz.home / "Player-Data" / f"P{i}.pem").is_file()]
        if missing:
            raise MPSPDZError(f"{spec.name} needs SSL certificates {', '.join(missing)} in {mpspdz.home}/Player-Data: "
                              f"run `Scripts/setup-ssl.sh {count}` in {mpspdz.home}")


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
