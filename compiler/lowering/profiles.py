"""Protocol profiles: ONE config object per MP-SPDZ protocol (like SecretFlow SPU's runtime config).

A :class:`Profile` names everything that depends on the protocol: the MP-SPDZ ``-E`` name, party binary and
script, number of parties, ring size, fixed-point precision, truncation, compile flags, and the approximation
chosen for each non-linear op. The default approximation per op is the cheapest candidate (by the cost model,
on this protocol) whose error bound meets the accuracy asked; ``justification`` keeps every candidate's cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from compiler.errors import UserError
from compiler.fixedpoint import FixedPoint

APPROX_OPS = ("exp", "reciprocal", "rowmax", "gelu", "rsqrt", "sigmoid", "tanh", "erf", "sqrt")
# Largest tolerated max_abs_error per op when choosing automatically (a ViT's logits tolerate ~1e-2 per layer).
DEFAULT_ACCURACY = {"exp": 0.01, "reciprocal": 0.01, "rowmax": 0.0, "gelu": 0.02, "rsqrt": 0.01, "sigmoid": 0.01,
                    "tanh": 0.01, "erf": 0.01, "sqrt": 0.01}
# Vector length the candidates are priced at: a typical attention/MLP call.
PRICING_N = 65 * 65 * 4
RANK_NETWORK = "lan"  # candidates are ranked by their estimated latency on this network


@dataclass(frozen=True)
class SecurityModel:
    """Who is trusted with what under a protocol (MP-SPDZ's documentation of each protocol, 3a0a7b1d).

    In every profile party 0 (the model owner) inputs the weights and party 1 (the client) the image(s); only
    the outputs are revealed, to party 1. A corrupted party within ``corrupt`` learns nothing else (semi-honest:
    if it follows the protocol; malicious: whatever it sends, and a cheating party makes the run abort)."""

    adversary: str  # "semi-honest" | "malicious"
    majority: str  # "honest" | "dishonest"
    corrupt: int  # how many parties the adversary may control
    roles: str  # every process that takes part, and what it holds

    def as_dict(self) -> dict[str, Any]:
        return {"adversary": self.adversary, "majority": self.majority, "corrupt": self.corrupt,
                "roles": self.roles, "inputs": INPUTS, "learns": LEARNS}

    def summary(self) -> str:
        return f"{self.adversary}, {self.majority} majority, up to {self.corrupt} corrupt"


INPUTS = "party 0 (model owner): the weights; party 1 (client): the image(s)"
LEARNS = ("party 1 learns the revealed outputs (logits); no party learns anything else of the other's input, "
          "only sizes (the model's shape is public)")


@dataclass(frozen=True)
class ProtocolSpec:
    name: str  # our flag value
    mpspdz: str  # `compile.py -E <mpspdz>`
    binary: str
    script: str
    n_parties: int  # processes of `binary` (trio/astra: the two online parties)
    dealer: int | None  # party index of the dealer, which holds no input
    trunc: str  # truncation of sfix products: both probabilistic (error < 1 LSB); "trunc_pr" = the protocol's own
    # one-round instruction (compile.py enables it for replicated-ring, rep4-ring, trio, astra), "generic" =
    # MP-SPDZ's mask-and-open TruncPr (the malicious 3PCs have no trunc_pr instruction: TRUNC_PR fails at run time)
    security: SecurityModel
    prep_binary: str | None = None  # trio/astra: the 3 processes that make the program's preprocessing
    prep_parties: int = 0
    needs_softspoken: bool = False  # its OT-based preprocessing fails in a USE_KOS build ("Case not implemented")
    field_bits: int | None = None  # shares modulo a prime of this many bits (MP-SPDZ's -lgp default) instead of Z_2^64
    compile_extra: tuple[str, ...] = ()  # further compile.py flags chosen by measurement (README's protocol section)
    run_extra: tuple[str, ...] = ()  # further party-binary flags chosen by measurement (every party passes them)

    @property
    def run_batch(self) -> int | None:
        """The run-time preprocessing batch that ``run_extra`` sets (``-b N``), else None (the binary's default)."""
        flags = list(self.run_extra)
        return int(flags[flags.index("-b") + 1]) if "-b" in flags else None


SEMI_HONEST_2 = SecurityModel("semi-honest", "dishonest", 1, "party 0 and party 1 compute")
PROTOCOLS: dict[str, ProtocolSpec] = {
    "semi2k": ProtocolSpec("semi2k", "semi2k", "semi2k-party.x", "Scripts/semi2k.sh", 2, None, "generic",
                           SEMI_HONEST_2),
    # run with -d (direct communication): each opening is one exchange of shares between parties 0 and 1 instead of
    # MP-SPDZ's default star (shares to a king, the sum back: two message latencies); -b 100000: the dealer sends
    # preprocessing in batches of up to 100,000 instead of 10,000, each batch a round for the receiving party.
    # vit_7_4_32 (MP-SPDZ 3a0a7b1d): 3,318 -> 1,249 rounds, party 0's bytes unchanged (131.6 MB), time unchanged on
    # loopback; -b 1,000,000: 1,146 rounds for 400 instead of 226 MB per process (README's protocol section)
    "dealer": ProtocolSpec("dealer", "dealer-ring", "dealer-ring-party.x", "Scripts/dealer-ring.sh", 3, 2, "generic",
                           SecurityModel("semi-honest", "honest", 1, "party 0 and party 1 compute; party 2, a "
                                         "trusted dealer without input, sends them correlated randomness"),
                           run_extra=("-d", "-b", "100000")),
    "replicated-ring": ProtocolSpec("replicated-ring", "replicated-ring", "replicated-ring-party.x",
                                    "Scripts/ring.sh", 3, None, "trunc_pr",
                                    SecurityModel("semi-honest", "honest", 1, "parties 0, 1 and 2 compute; party 2 "
                                                  "holds no input")),
    "rep4-ring": ProtocolSpec("rep4-ring", "rep4-ring", "rep4-ring-party.x", "Scripts/rep4-ring.sh", 4, None,
                              "trunc_pr", SecurityModel("malicious", "honest", 1, "parties 0-3 compute; parties 2 "
                                                        "and 3 hold no input")),
    "ps-rep-ring": ProtocolSpec("ps-rep-ring", "ps-rep-ring", "ps-rep-ring-party.x", "Scripts/ps-rep-ring.sh", 3,
                                None, "generic",
                                SecurityModel("malicious", "honest", 1, "parties 0, 1 and 2 compute (replicated "
                                              "secret sharing, post-sacrifice checks); party 2 holds no input")),
    "sy-rep-ring": ProtocolSpec("sy-rep-ring", "sy-rep-ring", "sy-rep-ring-party.x", "Scripts/sy-rep-ring.sh", 3,
                                None, "generic",
                                SecurityModel("malicious", "honest", 1, "parties 0, 1 and 2 compute (replicated "
                                              "secret sharing with SPDZ-wise MACs); party 2 holds no input")),
    "trio": ProtocolSpec("trio", "trio", "trio-party.x", "Scripts/trio.sh", 2, None, "trunc_pr",
                         SecurityModel("semi-honest", "honest", 1, "preprocessing parties 0-2 make the "
                                       "program's correlated randomness (prep party 2 holds no input and "
                                       "takes no part online); online parties 0 and 1 compute"),
                         prep_binary="trio-prep-party.x", prep_parties=3),
    "astra": ProtocolSpec("astra", "astra", "astra-party.x", "Scripts/astra.sh", 2, None, "trunc_pr",
                          SecurityModel("semi-honest", "honest", 1, "preprocessing parties 0-2 make the "
                                        "program's correlated randomness (prep party 2 holds no input and "
                                        "takes no part online); online parties 0 and 1 compute"),
                          prep_binary="astra-prep-party.x", prep_parties=3),
    "spdz2k": ProtocolSpec("spdz2k", "spdz2k", "spdz2k-party.x", "Scripts/spdz2k.sh", 2, None, "generic",
                           SecurityModel("malicious", "dishonest", 1, "party 0 and party 1 compute (MAC-checked "
                                         "shares, OT-based preprocessing)"), needs_softspoken=True),
    # semi-honest 2PC without a dealer, prime field: matrix triples from homomorphic encryption (one per matrix
    # product, not one OT triple per scalar product as semi2k); trunc_pr is local there (a 128-bit prime leaves
    # the 40-bit gap above the 52-bit operands), comparisons with edaBits (-Y): 4.6x fewer bytes than without
    "hemi": ProtocolSpec("hemi", "hemi", "hemi-party.x", "Scripts/hemi.sh", 2, None, "trunc_pr",
                         SecurityModel("semi-honest", "dishonest", 1, "party 0 and party 1 compute (additive shares "
                                       "modulo a 128-bit prime; triples and matrix triples from homomorphic "
                                       "encryption between the two)"), field_bits=128, compile_extra=("-Y",)),
}
# the original three semi-honest protocols: the default set of benchmarks and numeric checks
SEMI_HONEST_CORE = ("semi2k", "dealer", "replicated-ring")
ALIASES = {"dealer-ring": "dealer", "rep3-ring": "replicated-ring", "ring": "replicated-ring", "rep4": "rep4-ring"}
RING_BITS = 64
DEFAULT_F = 16
DEFAULT_K = 31
# --frac-bits that MP-SPDZ compiles and runs (3a0a7b1d, -R 64, k=31; measured): its sfix division (FPDiv) asks
# for a ring of over 64 bits below f=15, and from f=23 on constants of 128 leave sfix's range [-2^(k-f-1), ...)
MIN_F, MAX_F = 15, DEFAULT_K - 9
LOOP_BUDGET = 100000  # `-b`: vectorised calls are not cut into 1000-element chunks, so rounds don't grow with n
# `-M` (preserve memory order): the templates gather/scatter through regint address vectors, whose order
# MP-SPDZ's scheduler otherwise does not track ("Order of memory instructions not preserved, errors possible").


@dataclass(frozen=True)
class Profile:
    spec: ProtocolSpec
    f: int = DEFAULT_F
    k: int = DEFAULT_K
    ring_bits: int = RING_BITS
    approx: dict[str, str] = field(default_factory=dict)  # op -> choice
    justification: dict[str, dict[str, Any]] = field(default_factory=dict)  # op -> {choice: cost, chosen}
    batch: int = 1000  # run-time preprocessing batch (the spec's run_batch, else 1000), read by the cost model
    cmp_bits: tuple[int, ...] = ()  # the comparison bit lengths of the program (lowering.choose_comparison_lengths)

    @property
    def budget(self) -> int:
        return LOOP_BUDGET

    @property
    def protocol(self) -> str:
        return self.spec.name

    @property
    def mpspdz_protocol(self) -> str:
        return self.spec.mpspdz

    @property
    def binary(self) -> str:
        return self.spec.binary

    @property
    def script(self) -> str:
        return self.spec.script

    @property
    def n_parties(self) -> int:
        return self.spec.n_parties

    @property
    def trunc(self) -> str:
        return self.spec.trunc

    @property
    def domain(self) -> str:
        """What shares live in: "Z_2^64" or "GF(p), p a 128-bit prime" (``ring_bits`` = 128 then)."""
        return f"GF(p), p a {self.spec.field_bits}-bit prime" if self.spec.field_bits else f"Z_2^{self.ring_bits}"

    @property
    def fx(self) -> FixedPoint:
        return FixedPoint(self.f, self.k)

    @property
    def compile_flags(self) -> list[str]:
        # a prime field's size is a run-time choice (-lgp, 128 by default): compile.py takes no -R for it
        domain = [] if self.spec.field_bits else ["-R", str(self.ring_bits)]
        return ["-E", self.spec.mpspdz, *domain, *self.spec.compile_extra, "-b", str(LOOP_BUDGET), "-M"]

    def compile_command(self, program: str) -> str:
        return " ".join(["./compile.py", *self.compile_flags, program])

    @property
    def run_flags(self) -> list[str]:
        """Flags every party binary of this protocol is started with (beyond host, port and party number)."""
        return list(self.spec.run_extra)

    def run_command(self, program: str) -> str:
        """The MP-SPDZ script's command line: the program first, as Scripts/run-common.sh names its logs after its
        first argument (logs/<program>-<party>), then the run flags."""
        return " ".join([self.spec.script, program, *self.run_flags])

    def as_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "mpspdz_protocol": self.mpspdz_protocol, "binary": self.binary,
                "script": self.script, "n_parties": self.n_parties, "dealer": self.spec.dealer,
                "ring_bits": self.ring_bits, "domain": self.domain, "f": self.f, "k": self.k, "truncation": self.trunc,
                "compile_flags": self.compile_flags, "run_flags": self.run_flags, "approx": dict(self.approx),
                "security": self.spec.security.as_dict(),
                **({"prep_binary": self.spec.prep_binary, "prep_parties": self.spec.prep_parties}
                   if self.spec.prep_binary else {})}


def protocol_spec(protocol: str, flag: str = "--protocol") -> ProtocolSpec:
    """The protocol's spec; UserError naming ``flag`` (the option it came from) when it is unknown."""
    name = ALIASES.get(protocol, protocol)
    if name not in PROTOCOLS:
        raise UserError(f"{flag} {protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def _registry() -> dict[str, dict[str, Any]]:
    from compiler.approx import REGISTRY

    return REGISTRY


DOMINANCE_KEYS = ("bytes_all", "rounds", "max_abs_error")


def _undominated(names: list[str], table: dict[str, dict[str, Any]]) -> list[str]:
    """The candidates of ``names`` that no other one of them dominates (<= bytes, rounds and error, one strictly)."""
    def dominates(a: str, b: str) -> bool:
        pairs = [(table[a][key], table[b][key]) for key in DOMINANCE_KEYS]
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)
    return [b for b in names if not any(dominates(a, b) for a in names if a != b)]


def choose_approximations(profile: Profile, accuracy: dict[str, float] | None = None
                          ) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Per op, the candidate on this protocol whose error bound meets the accuracy, not dominated by another such
    on bytes, rounds and error, with the lowest LAN latency (``lan_s``, seconds); with every cost."""
    accuracy = {**DEFAULT_ACCURACY, **(accuracy or {})}
    chosen: dict[str, str] = {}
    why: dict[str, dict[str, Any]] = {}
    for op in APPROX_OPS:
        candidates = _registry().get(op, {})
        table: dict[str, Any] = {}
        for choice, approx in sorted(candidates.items()):
            cost = approx.cost(PRICING_N, profile)
            table[choice] = {"bytes_all": int(cost.bytes_all), "rounds": int(cost.rounds),
                             "max_abs_error": float(approx.max_abs_error),
                             "lan_s": round(cost.latency(RANK_NETWORK), 6),
                             "accurate_enough": bool(approx.max_abs_error <= accuracy[op])}
        if not table:
            continue
        eligible = [c for c in table if table[c]["accurate_enough"]] or \
            [min(table, key=lambda c: table[c]["max_abs_error"])]
        # lan_s includes measured (noisy) compute seconds: it ranks only candidates no other beats on every
        # deterministic figure, so a candidate with more bytes, rounds and error is never chosen
        chosen[op] = min(_undominated(eligible, table), key=lambda c: (table[c]["lan_s"], table[c]["max_abs_error"]))
        why[op] = {"n": PRICING_N, "tolerance": accuracy[op], "chosen": chosen[op], "candidates": table}
    return chosen, why


def get_profile(protocol: str, frac_bits: int | None = None, approx: dict[str, str] | None = None,
                accuracy: dict[str, float] | None = None) -> Profile:
    """The profile of ``protocol`` with ``frac_bits`` (default 16) and approximation overrides ``{op: choice}``."""
    spec = protocol_spec(protocol)
    f = DEFAULT_F if frac_bits is None else int(frac_bits)
    if not MIN_F <= f <= MAX_F:
        raise UserError(f"--frac-bits {frac_bits} is out of range; use {MIN_F}..{MAX_F} (k={DEFAULT_K}): below, "
                        f"MP-SPDZ's division needs a ring over 64 bits; above, the programs' constants (up to 64) "
                        f"leave sfix's range")
    base = Profile(spec=spec, f=f, ring_bits=spec.field_bits or RING_BITS, batch=spec.run_batch or Profile.batch)
    chosen, why = choose_approximations(base, accuracy)
    registry = _registry()
    for op, choice in (approx or {}).items():
        if op not in APPROX_OPS:
            raise UserError(f"--approx {op}={choice}: unknown op {op!r}; approximated ops: {', '.join(APPROX_OPS)}")
        if choice not in registry.get(op, {}):
            raise UserError(f"--approx {op}={choice}: unknown choice; choose one of "
                            f"{', '.join(sorted(registry.get(op, {})))}")
        chosen[op] = choice
        if op in why:
            why[op] = {**why[op], "chosen": choice, "overridden_by_user": True}
    return replace(base, approx=chosen, justification=why)


def parse_approx_flags(flags: list[str] | None) -> dict[str, str]:
    """``["gelu=poly", "exp=limit8"]`` -> ``{"gelu": "poly", "exp": "limit8"}`` (the CLI's ``--approx``)."""
    out: dict[str, str] = {}
    for flag in flags or []:
        op, sep, choice = flag.partition("=")
        if not sep or not op or not choice:
            raise UserError(f"--approx {flag!r} is malformed; write op=choice, e.g. --approx gelu=poly")
        op, choice = op.strip(), choice.strip()
        if out.get(op, choice) != choice:
            raise UserError(f"--approx {op}={out[op]} and --approx {op}={choice} contradict each other; give one "
                            f"choice per op")
        out[op] = choice
    return out
