"""Cost of one vectorised MP-SPDZ call (a :class:`Step`) per protocol, from formulas fitted to measurements.

Formulas (coefficients in :mod:`compiler.cost.fitted`, produced by :mod:`compiler.cost.fit` from
``shared/mpspdz-costs/mpspdz_costs.csv`` and ``compiler/cost/data/protocol_costs.csv`` (dealer: under its profile's
``-d -b 100000``): MP-SPDZ 3a0a7b1d, 64-bit rings, f=16, k=31), for a call on n elements
(matmul: O = M·P outputs and W = M·K·P scalar products, times ``instances``):

* online rounds  = a + c·⌈O·w / budget⌉ (+ d·W/1000): the compiler cuts a vectorised non-linear call into
  chunks of ``budget`` (``compile.py -b``, default 1000) that run one after another, so rounds grow with n
  under the default budget and are flat with ``-b 100000``;
* offline rounds = c·O·v / min(batch, cap) (+ d·W/1000) plus a *setup* a: the first preprocessing batch
  (run-time ``-b``, default 1000; beyond ``cap`` a larger batch stops helping); consecutive calls share
  batches, so the batch count is continuous. The setup (constant rounds and bytes) is paid once per program
  and primitive (a comparison: per bit length, whose edaBits are their own kind), so costs combine it with max
  per primitive, not +;
* bytes (all parties / party 0) = a + b·O + c·W + d·(M·K + K·P), linear: semi2k pays ~3.1 KB per scalar
  product of a matmul (one OT triple each, no matrix triples); ``online_share`` splits bytes; the slopes lean
  on the large measured calls (the marginal cost each further call of a program pays);
* input: semi2k and dealer derive shares from PRG seeds (nothing sent), replicated-ring sends one share;
* seconds (local compute, loopback) = a + b·O + c·W + d·(M·K + K·P).

Comparison-based primitives (ltz, relu and the built-ins) decompose k bits (a step's ``bits``, else the profile's
k; MP-SPDZ's LTZ on k + 1 bits). The fits are at k=31; another bit length k' scales their bytes (and semi2k's
offline rounds, which follow its bit-triple volume) by (c + k')/(c + 31) and removes ``ROUNDS_PER_LEVEL`` online
rounds per carry-tree level saved, ⌈log2 31⌉ − ⌈log2 k'⌉ (MP-SPDZ's CarryOutAux is a log-depth tree over the bits).
c (``FIXED_BITS``) is the part of a comparison that does not grow with the bits (splitting shares, the bit-to-
arithmetic conversion): fitted to LTZ at k' = 8, 12, 16, 31 on n = 4096 with ``-b 100000`` (MP-SPDZ 3a0a7b1d,
party 0's timer bytes and rounds; see benchmarks/README.md), within 5 % (rep3, dealer) and 14 % (semi2k) on bytes
and exact on online rounds.

``ltz2`` — the two top bits k' − 1 and k' of one comparison's operand mod 2^(k'+1) (the GeLU band form,
compiler/approx/gelu.py): MP-SPDZ's LTZ on k' + 1 bits whose carry into bit k' − 1 also gives bit k' − 1, one
more AND for the carry into bit k', and both bits converted to arithmetic in one call: priced as that LTZ plus
one ring element per value from party 0 (the second conversion) and one online round. Measured on 33,280 values
at k' = 19 (MP-SPDZ 3a0a7b1d, -b 100000, party 0's timer): 24.4, 31.8 and 838 B per value and 9, 31 and 86
rounds under replicated-ring, dealer and semi2k, against 24.7, 32.1 and 882 B modelled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from compiler.cost.fitted import FITS
from compiler.errors import CompileError

PROTOCOL_ALIASES = {"semi2k": "semi2k", "dealer": "dealer", "dealer-ring": "dealer",
                    "replicated-ring": "replicated-ring", "rep3-ring": "replicated-ring", "ring": "replicated-ring",
                    "rep4-ring": "rep4-ring", "rep4": "rep4-ring", "ps-rep-ring": "ps-rep-ring",
                    "sy-rep-ring": "sy-rep-ring", "trio": "trio", "astra": "astra", "spdz2k": "spdz2k",
                    "hemi": "hemi"}
PARTIES = {"semi2k": 2, "dealer": 3, "replicated-ring": 3, "rep4-ring": 4, "ps-rep-ring": 3, "sy-rep-ring": 3,
           "trio": 3, "astra": 3, "spdz2k": 2, "hemi": 2}  # dealer: 2 computing parties + the dealer; trio/astra: 2 online + a helper
WORD_BYTES = 8  # one ring element of Z_2^64 (hemi's 128-bit field elements count as two)
MEASURED_K = 31
# Input and reveal, in ring elements per value: (input: all parties, reveal: all parties, reveal: party 0).
# Measured: 20,000 sfix values input by party 0 or revealed to party 1, `Data sent`/`Global data sent` of MP-SPDZ
# 3a0a7b1d (trio/astra: online and preprocessing processes together). semi2k/dealer derive the other shares from
# PRG seeds; replicated-ring/ps/sy-rep-ring send one share, rep4-ring two. spdz2k (which this build cannot run):
# MP-SPDZ's compile-time estimate, 8 + 1,024 B per input and 32 + 4,096 B per revealed value (MAC preprocessing).
# hemi: semi2k's scheme in a 128-bit field (PRG-seeded input shares, one 16-byte share sent per revealed value).
IO_WORDS = {"semi2k": (0, 1, 1), "dealer": (0, 1, 1), "replicated-ring": (1, 2, 1), "rep4-ring": (2, 6, 3),
            "ps-rep-ring": (1, 2, 1), "sy-rep-ring": (1, 2, 1), "trio": (1, 7, 3), "astra": (1, 7, 3),
            "spdz2k": (129, 516, 258), "hemi": (0, 2, 2)}
# (c, online rounds per carry level) of a comparison's bit-length dependence (see the module doc)
FIXED_BITS = {"semi2k": 0.0, "dealer": 31.0, "replicated-ring": 15.0, "hemi": 13.0}
# the same for offline rounds, where they follow the bits (semi2k's bit triples, hemi's edaBit batches). hemi: LTZ
# of 8,192 values at k' = 31 and 16 (-Y, MP-SPDZ 3a0a7b1d): 35.4 and 23.6 MB all parties, 1,333 and 1,083 rounds
OFFLINE_FIXED_BITS = {"semi2k": 0.0, "hemi": 48.0}
# dealer: one exchange per tree level under its profile's -d (LTZ of 4,096 at k' = 12, 16, 26, 31: 12, 12, 13, 13
# rounds; star-shaped openings took two)
ROUNDS_PER_LEVEL = {"semi2k": 2, "dealer": 1, "replicated-ring": 1}
# Truncation of inputs of at most this many bits (a trunc step's ``bits``) where MP-SPDZ truncates them with a large
# gap to the 64-bit ring (Replicated::trunc_pr, eprint 2018/403: k + 40 <= 64): party 2 sends party 1 its masked
# share, party 0 sends and waits for nothing. Measured (MP-SPDZ 3a0a7b1d, 16,900 values of 19 and 24 bits, -R 64):
# 0 bytes and 0 rounds at party 0, 16 B per value all parties; at 25 bits the fitted 2 rounds and 8 B at party 0.
SHORT_TRUNC = {"replicated-ring": (24, 16.0)}  # (largest input bits, bytes per value, all parties)
BIT_DECOMPOSING = {"ltz", "relu", "exp:mpspdz", "reciprocal:mpspdz", "rsqrt:mpspdz", "gelu:mpspdz", "apprcr",
                   "fpdiv_nearest"}
PRIMITIVES = ("matmul", "matmul_int", "mul", "mul_int", "dot", "trunc", "ltz", "ltz2", "relu", "input", "weights",
              "reveal")
# Protocols that reshare a dot product Σ x_i·y_i as ONE value (MP-SPDZ's prepare_dotprod/finalize_dotprod in
# Protocols/Replicated.hpp, Rep4.hpp, Astra.hpp, SpdzWise.hpp): a "dot" step costs a mul_int per output there, per
# term elsewhere (Beaver: semi2k, dealer, hemi; ps-rep-ring, whose PostSacrifice multiplies term by term). Measured
# on a LayerNorm's dot products (tests/test_cost_model.py)
DOT_PER_OUTPUT = {"replicated-ring", "rep4-ring", "trio", "astra", "sy-rep-ring"}


# Protocols whose comparisons open one masked value each (edaBits, no -Z split: MP-SPDZ's default for the dealer
# alone, Compiler/compilerLib.py build_program): an "ltz" step of shape (J,) compares each value with J public
# thresholds through ONE masked opening (helpers' mpcvit_below), so each value's further J − 1 comparisons skip it:
# (party 0, all parties) bytes saved per such comparison, one ring element from each computing party. Measured
# (MP-SPDZ 3a0a7b1d, 512 values at 26 bits, J = 8 and 32): 27.4 → 19.4–19.6 B per comparison at party 0, same rounds
SHARED_MASK_SAVING = {"dealer": (8.0, 16.0)}


@dataclass(frozen=True)
class Step:
    # "matmul" | "matmul_int" | "mul" | "mul_int" | "dot" | "trunc" | "ltz" | "ltz2" | "relu" | "input" | "weights" |
    # "reveal" | "<op>:<choice>";
    # "weights": party 0's input of one weight tensor, bytes only: the program inputs every weight tensor in one
    # round (spdz_templates/program.mpc.j2), priced once by the input node's zero-size party-0 "input" step
    prim: str
    n: int  # elements of the one vectorised call (matmul: M*P outputs)
    # matmul(_int): (M, K, P) per instance; dot: (terms,) per output; ltz: (J,), J thresholds per value (one mask)
    shape: tuple[int, ...] = ()
    instances: int = 1  # independent copies issued together (heads, images)
    party: int | None = None  # "input"/"weights": the party providing it
    # comparisons: the bit length k they decompose (None: the profile's k); trunc: its inputs' bit length
    bits: int | None = None
    parallel: bool = False  # runs beside the steps after it (same bytes, no rounds of its own)


Setup = tuple[tuple[str, float, float, float], ...]  # (primitive, rounds, bytes p0, bytes all), sorted


# dealer: MP-SPDZ's compiler counts each matmulsm's M·K·P scalar products as triples besides its matrix triple, and
# dealer-ring-party.x generates the counted triples in batches of up to its -b, which the matrix products never
# use: up to one batch of unused triples (one ring element each, sent to one party). A setup kind of this prefix
# (the suffix: its cap in bytes, 8·batch) adds up over calls up to the cap instead of being paid once. Measured
# (MP-SPDZ 3a0a7b1d, vit_1_4_8 scaling, ΣM·K·P = 25,120): the dealer sends 201 KB more at -b 100000 than it uses
UNUSED_TRIPLES = "unused_triples/"
UNUSED_TRIPLE_PROTOCOLS = {"dealer"}
TRIPLE_FREE = ("matmul", "trunc", "ltz")  # primitives that draw no triples (matrix triples, edaBits)
DRAWS_TRIPLES = "draws_triples"  # a setup kind of no cost: the program asks for triples


def _capped(prim: str) -> float | None:
    return float(prim[len(UNUSED_TRIPLES):]) if prim.startswith(UNUSED_TRIPLES) else None


def _merge_setup(a: Setup, b: Setup) -> Setup:
    merged: dict[str, tuple[float, float, float]] = {}
    for prim, *values in a + b:
        old = merged.get(prim, (0.0, 0.0, 0.0))
        cap = _capped(prim)
        merged[prim] = tuple(max(x, y) if cap is None else min(x + y, cap)  # type: ignore[assignment]
                             for x, y in zip(old, values))
    return tuple(sorted((prim, *values) for prim, values in merged.items()))


@dataclass(frozen=True)
class Cost:
    """What a step (or a sum of steps) costs.

    ``+`` adds everything except the one-time preprocessing setup (the first batch of each kind of correlated
    randomness): per primitive the setup is paid once (max), different primitives' setups add.
    ``bytes_*`` and ``rounds`` include the setup."""

    variable_bytes_p0: float = 0.0
    variable_bytes_all: float = 0.0
    online_bytes_all: float = 0.0
    online_rounds: float = 0.0
    offline_rounds: float = 0.0
    setup: Setup = ()
    seconds: float = 0.0  # local computation (fitted on loopback)

    def __add__(self, other: "Cost") -> "Cost":
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.variable_bytes_p0 + other.variable_bytes_p0,
                    self.variable_bytes_all + other.variable_bytes_all,
                    self.online_bytes_all + other.online_bytes_all, self.online_rounds + other.online_rounds,
                    self.offline_rounds + other.offline_rounds, _merge_setup(self.setup, other.setup),
                    self.seconds + other.seconds)

    def __radd__(self, other: Any) -> "Cost":  # sum() starts from 0
        return self if other == 0 else self.__add__(other)

    def times(self, count: int) -> "Cost":
        """``count`` copies run one after another (e.g. identical layers)."""
        setup = tuple((prim, *(v if _capped(prim) is None else min(v * count, _capped(prim)) for v in values))
                      for prim, *values in self.setup)
        return Cost(self.variable_bytes_p0 * count, self.variable_bytes_all * count,
                    self.online_bytes_all * count, self.online_rounds * count, self.offline_rounds * count,
                    setup, self.seconds * count)

    @property
    def setup_rounds(self) -> float:
        return sum(entry[1] for entry in self.setup)

    @property
    def bytes_p0(self) -> float:
        return self.variable_bytes_p0 + sum(entry[2] for entry in self.setup)

    @property
    def bytes_all(self) -> float:
        # unused triples are generated only once some step draws triples (a program of matrix products,
        # truncations and comparisons alone asks the dealer for none)
        draws = any(entry[0] == DRAWS_TRIPLES for entry in self.setup)
        return self.variable_bytes_all + sum(entry[3] for entry in self.setup if draws or _capped(entry[0]) is None)

    @property
    def rounds(self) -> float:
        return self.online_rounds + self.offline_rounds + self.setup_rounds

    @property
    def offline_bytes_all(self) -> float:
        return self.bytes_all - self.online_bytes_all

    def latency(self, network: Any) -> float:
        """Seconds: rounds × RTT + bytes (all parties) / bandwidth + local compute."""
        from compiler.cost.network import get_network

        net = get_network(network) if isinstance(network, str) else network
        return self.rounds * net.rtt_s + self.bytes_all * 8 / net.bandwidth_bps + self.seconds

    def as_dict(self) -> dict[str, float]:
        return {"bytes_p0": self.bytes_p0, "bytes_all": self.bytes_all, "rounds": self.rounds,
                "online_bytes_all": self.online_bytes_all, "offline_bytes_all": self.offline_bytes_all,
                "online_rounds": self.online_rounds, "offline_rounds": self.offline_rounds + self.setup_rounds,
                "compute_s": self.seconds}


@dataclass(frozen=True)
class CostProfile:
    """The profile attributes the cost model reads (any object with these attributes works, e.g. the
    lowering's Profile): protocol, f, k, compile-time ``budget`` and run-time preprocessing ``batch``."""

    protocol: str = "replicated-ring"
    f: int = 16
    k: int = 31
    budget: int = 1000
    batch: int | None = None  # None: the batch the protocol's parties run with (see profile_params)
    approx: dict[str, str] = field(default_factory=dict)


def normalise_protocol(protocol: str) -> str:
    try:
        return PROTOCOL_ALIASES[protocol]
    except KeyError:
        raise CompileError(f"unknown protocol {protocol!r} for the cost model; use one of "
                           f"{', '.join(sorted(set(PROTOCOL_ALIASES.values())))}") from None


def profile_params(profile: Any) -> tuple[str, int, int, int]:
    """(protocol, k, budget, batch) of any profile-like object; absent attributes take MP-SPDZ defaults, the batch
    the one the protocol's parties are started with (its lowering profile's ``-b``, e.g. dealer's 100,000)."""
    from compiler.lowering.profiles import protocol_spec

    protocol = normalise_protocol(getattr(profile, "protocol", profile if isinstance(profile, str) else ""))
    batch = getattr(profile, "batch", None) or protocol_spec(protocol).run_batch or 1000
    return (protocol, int(getattr(profile, "k", MEASURED_K)), int(getattr(profile, "budget", 1000) or 1000),
            int(batch))


def _linear(coef: list[float], outputs: float, work: float, operands: float) -> float:
    return coef[0] + coef[1] * outputs + coef[2] * work + coef[3] * operands


def chunk_count(outputs: float, width: float, limit: float, cap: float, shared: bool) -> float:
    """⌈outputs·width / min(limit, cap)⌉ chunks of one call; ``shared`` (preprocessing batches, which consecutive
    calls share) the continuous count."""
    count = outputs * width / min(limit, cap)
    return count if shared else float(math.ceil(count))


def _chunked(coef: list[float], outputs: float, work: float, limit: int, shared: bool) -> tuple[float, float]:
    """(fixed part, volume part) of a chunked rounds formula."""
    fixed, per_chunk, width, per_kwork, cap = coef
    return fixed, per_chunk * chunk_count(outputs, width, limit, cap, shared) + per_kwork * work / 1000


def fitted_cost(prim: str, protocol: str, outputs: float, work: float = 0.0, operands: float = 0.0,
                k: int = MEASURED_K, budget: int = 1000, batch: int = 1000) -> Cost:
    """Evaluate the fitted formula of ``prim`` (a measured primitive or MP-SPDZ built-in)."""
    fit = FITS.get((protocol, prim))
    if fit is None:
        raise CompileError(f"no cost formula for primitive {prim!r} under protocol {protocol!r}")
    if outputs <= 0:
        return Cost()
    on_fixed, on_var = _chunked(fit["online_rounds"], outputs, work, budget, False)
    off_fixed, off_var = _chunked(fit["offline_rounds"], outputs, work, batch, True)
    scale = 1.0
    if prim in BIT_DECOMPOSING and k != MEASURED_K:
        # protocols whose bit-length dependence was not measured keep the proportional rule the model used before
        # (c = 0, no online rounds saved)
        fixed = FIXED_BITS.get(protocol, 0.0)
        scale = (fixed + k) / (fixed + MEASURED_K)
        levels = math.ceil(math.log2(MEASURED_K)) - math.ceil(math.log2(max(k, 2)))
        chunks = chunk_count(outputs, fit["online_rounds"][2], budget, fit["online_rounds"][4], False)
        on_var = max(on_var - ROUNDS_PER_LEVEL.get(protocol, 0) * levels * chunks, 0.0)
        if protocol in OFFLINE_FIXED_BITS:
            fixed = OFFLINE_FIXED_BITS[protocol]
            off_var *= (fixed + k) / (fixed + MEASURED_K)
    all_coef, p0_coef = fit["bytes_all"], fit["bytes_p0"]
    variable_all = (_linear(all_coef, outputs, work, operands) - all_coef[0]) * scale
    return Cost(variable_bytes_p0=(_linear(p0_coef, outputs, work, operands) - p0_coef[0]) * scale,
                variable_bytes_all=variable_all, online_bytes_all=variable_all * fit["online_share"],
                online_rounds=on_fixed + on_var, offline_rounds=off_var,
                setup=((setup_kind(prim, protocol, k, scale), off_fixed, p0_coef[0], all_coef[0]),),
                seconds=max(_linear(fit["seconds"], outputs, work, operands), 0.0))


# protocols whose primitives all draw on one kind of first preprocessing batch: hemi's HE triples (~3 MB, measured
# as every primitive's fixed part) are made once for the whole program, whichever primitive asks first; dealer: its
# fixed rounds are mostly the PRG seeds the dealer sends once per program (3 of a lone primitive's ~5 rounds),
# each further kind of preprocessing one batch (a round only for the party that receives it). Paid per kind, the
# model put whole vit_1_4_8 programs 15-20 % above their measured rounds; paid once, 6-7 % (MP-SPDZ 3a0a7b1d)
SHARED_SETUP = {"hemi": "he_triples", "dealer": "dealer_setup"}


def setup_kind(prim: str, protocol: str, k: int, scale: float) -> str:
    """The name under which a primitive's one-time setup is paid once per program (see :class:`Cost`)."""
    if protocol in SHARED_SETUP:
        return SHARED_SETUP[protocol]
    return prim if scale == 1.0 else f"{prim}/{k}"


def _transfer(protocol: str, n: int, party: int | None, reveal: bool) -> Cost:
    """One round of n values (``IO_WORDS`` ring elements each). Input from ``party`` (default 0): it sends all.
    Reveal to ``party`` (default 1, the client): the other computing parties send their shares."""
    message = float(n * WORD_BYTES)
    input_words, reveal_words, reveal_p0_words = IO_WORDS[protocol]
    if reveal:
        total = message * reveal_words
        sent_by_p0 = 0.0 if party == 0 else message * reveal_p0_words
    else:
        total = message * input_words
        sent_by_p0 = total if party in (None, 0) else 0.0
    return Cost(variable_bytes_p0=sent_by_p0, variable_bytes_all=total, online_bytes_all=total, online_rounds=1.0)


def step_cost(step: Step, profile: Any) -> Cost:
    """Price one step under ``profile`` (anything with protocol/k/budget/batch; a protocol name works too)."""
    if step.parallel:
        return replace(step_cost(replace(step, parallel=False), profile), online_rounds=0.0)
    protocol, k, budget, batch = profile_params(profile)
    if step.prim == "dot":  # n outputs of shape[0] terms each, no truncation
        terms = 1 if protocol in DOT_PER_OUTPUT else int(step.shape[0])
        return step_cost(Step("mul_int", step.n * terms, instances=step.instances), profile)
    if step.prim == "relu" and step.bits and step.bits != k:  # measured: relu = ltz + one bit x value product
        return steps_cost([Step("ltz", step.n, instances=step.instances, bits=step.bits),
                           Step("mul_int", step.n, instances=step.instances)], profile)
    if step.prim == "ltz" and step.shape and protocol in SHARED_MASK_SAVING:
        cost = step_cost(replace(step, shape=()), profile)
        extra = step.n * max(int(step.instances), 1) * (1 - 1 / step.shape[0])  # beyond each value's first
        p0, everyone = (saved * extra for saved in SHARED_MASK_SAVING[protocol])
        return replace(cost, variable_bytes_p0=cost.variable_bytes_p0 - p0, variable_bytes_all=cost.variable_bytes_all
                       - everyone, online_bytes_all=max(cost.online_bytes_all - everyone, 0.0))
    k = step.bits or k
    copies = max(int(step.instances), 1)
    if step.prim == "ltz2":  # see the module doc
        ltz = fitted_cost("ltz", protocol, float(step.n * copies), k=k, budget=budget, batch=batch)
        extra = float(step.n * copies * WORD_BYTES)
        share = ltz.variable_bytes_all / ltz.variable_bytes_p0 if ltz.variable_bytes_p0 else 1.0
        return ltz + Cost(variable_bytes_p0=extra, variable_bytes_all=extra * share, online_bytes_all=extra * share,
                          online_rounds=1.0)
    if step.prim == "trunc" and step.bits and step.bits <= SHORT_TRUNC.get(protocol, (0, 0.0))[0]:
        total = SHORT_TRUNC[protocol][1] * step.n * copies
        return Cost(variable_bytes_all=total, online_bytes_all=total)
    if step.prim == "matmul_int":  # left untruncated: the fitted product less its outputs' truncation
        product = step_cost(replace(step, prim="matmul"), profile)
        trunc = step_cost(Step("trunc", step.n, instances=step.instances), profile)
        return replace(product, **{name: max(getattr(product, name) - getattr(trunc, name), 0.0) for name in (
            "variable_bytes_p0", "variable_bytes_all", "online_bytes_all", "online_rounds", "offline_rounds",
            "seconds")})
    if step.prim == "matmul":
        if len(step.shape) != 3:
            raise CompileError(f"matmul step needs shape (M, K, P), got {step.shape!r}")
        m, kk, p = step.shape
        cost = fitted_cost("matmul", protocol, float(m * p * copies), float(m * kk * p * copies),
                           float((m * kk + kk * p) * copies), k, budget, batch)
        if protocol in UNUSED_TRIPLE_PROTOCOLS:
            cost += Cost(setup=((f"{UNUSED_TRIPLES}{WORD_BYTES * batch}", 0.0, 0.0,
                                 float(WORD_BYTES * m * kk * p * copies)),))
        return cost
    if step.prim in ("input", "reveal"):
        return _transfer(protocol, step.n * copies, step.party, step.prim == "reveal")
    if step.prim == "weights":
        return replace(_transfer(protocol, step.n * copies, 0, False), online_rounds=0.0)
    if (protocol, step.prim) in FITS:
        cost = fitted_cost(step.prim, protocol, float(step.n * copies), k=k, budget=budget, batch=batch)
        if protocol in UNUSED_TRIPLE_PROTOCOLS and step.prim not in TRIPLE_FREE:
            cost += Cost(setup=((DRAWS_TRIPLES, 0.0, 0.0, 0.0),))
        return cost
    if ":" in step.prim:  # an approximation priced through its own steps (default params)
        from compiler.approx import get

        op, choice = step.prim.split(":", 1)
        return get(op, choice).cost(step.n * copies, replace_profile(profile, protocol))
    raise CompileError(f"unknown cost primitive {step.prim!r}; known: {', '.join(PRIMITIVES)} or <op>:<choice>")


def replace_profile(profile: Any, protocol: str) -> Any:
    """The profile itself when it is an object; a CostProfile when only a protocol name was given."""
    return CostProfile(protocol=protocol) if isinstance(profile, str) else profile


def steps_cost(steps: list[Step], profile: Any) -> Cost:
    """Steps run in sequence: their costs add (setup once)."""
    return sum((step_cost(s, profile) for s in steps), Cost())


__all__ = ["Step", "Cost", "CostProfile", "step_cost", "steps_cost", "fitted_cost", "normalise_protocol",
           "PARTIES"]
