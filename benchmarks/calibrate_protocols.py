"""Measure MP-SPDZ primitives under the protocols beyond the shared calibration (rep4-ring, ps-rep-ring, trio, astra).

    MP_SPDZ_HOME=... python -m benchmarks.calibrate_protocols --protocols rep4-ring trio --out compiler/cost/data/protocols.csv

Method (the shared `mpspdz-costs` calibration's, written as rows the fit reads the same way): each primitive is ONE
vectorised call over n elements in `start_timer(1)/stop_timer(1)`, its inputs secret from party 0 outside the
timer; compiled as the compiler's profiles compile (`-E <protocol> -R 64 -b 100000 -M`, the profile's truncation)
and run once with `-v` by the runtime's own launcher (so trio/astra run with their preprocessing parties). Columns (the shared calibration's names; ``timer_s_median`` holds the fastest of ``--repeats`` runs):
``p0_timer_*`` = party 0's ``Time1`` line (trio/astra: plus its preprocessing process's); ``allparties_timer_MB``
= the sum of every process's ``Time1`` MB; ``op_*_MB`` = the whole program's `-v` online/offline bytes minus those
of the same program with an empty timer (``noop``/``matnoop``), so the op's own online and preprocessing shares
(trio/astra: a preprocessing process's whole traffic is offline). Rounds: offline = that difference (at most the
timer's rounds; trio/astra: the preprocessing process's ``Time1`` rounds), online = the timer's rest (the whole
program's online difference also counts rounds the op adds to the surrounding input/reveal, e.g. +4 in rep4-ring). Bytes and
rounds are deterministic; seconds are the fastest of ``--repeats`` runs on a shared 2-core machine (other jobs
slow a run down, never speed it up; still indicative only: single runs varied up to 10×).

A protocol the build cannot run (spdz2k in a USE_KOS build) gets rows of MP-SPDZ's *compiler estimate* instead
(run_flags ``compile-only``): ``Expected communication is X MB online and Y MB offline`` (all parties, split
evenly for party 0) and the compiler's ``virtual machine rounds``, each minus the empty program's; no seconds.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import re

import numpy as np

from compiler.lowering.profiles import Profile, protocol_spec as profile_spec
from compiler.runtime.mpspdz import check_protocol_ready, find_mpspdz, kos_build, protocol_spec
from compiler.runtime.overlay import install_inputs, make_overlay
from compiler.runtime.parser import Phase, parse_party_output
from compiler.runtime.processes import free_port_base, run_parties

F, K = 16, 31
# primitive -> (MP-SPDZ expression on sfix vectors x, y; input range of x; what is called, as in the CSV)
PRIMITIVES = {
    "mul_sfix": ("x * y", (-3, 3), "x * y, sfix*sfix (sint product + truncation by f=16)"),
    "mul_sint": ("x.v * y.v", (-3, 3), "x * y, sint*sint (no truncation)"),
    "ltz": ("x < 0", (-3, 3), "x < 0 on sfix (LTZ; result sint bit)"),
    "relu": ("(0 < x).if_else(x, 0)", (-3, 3), "ml.relu(x) = (0 < x).if_else(x, 0)"),
    "trunc": ("x * 0.3700103759765625", (-3, 3), "sfix * public cfix: local product + one truncation by f"),
    "exp": ("ml.exp(x)", (-10, 0), "ml.exp(x) (the exp_mpspdz template); x in [-10,0]"),
    "recip_div": ("1 / x", (1, 300), "1 / x -> library.FPDiv (the reciprocal_mpspdz template); x in [1,300]"),
    "invsqrt": ("mpc_math.InvertSqrt(x)", (0.01, 100), "mpc_math.InvertSqrt(x) (the rsqrt_mpspdz template)"),
    "gelu": ("ml.Gelu([1, n]).compute_gelu_approx(x, 0, n)", (-6, 6), "ml.Gelu compute_gelu_approx, one call"),
    "recip_nearest": (f"sfix._new(library.FPDiv(cint(2 ** {F}, size=n), x.v, {K}, {F}, nearest=True))", (1, 300),
                      "sfix._new(library.FPDiv(2^f, x.v, k, f, nearest=True)) (what sfix.compute_reciprocal does)"),
    "recip_apprcr": (f"sfix._new(library.AppRcr(x.v, {K}, {F}))", (1, 300),
                     "sfix._new(library.AppRcr(x.v, k, f)): only the initial linear approximation of FPDiv"),
}
SIZES = (1, 64, 4096)
MATMULS = ((17, 16, 48), (65, 64, 65), (65, 256, 64))
HEADER = ["protocol", "variant", "compile_cmd", "run_flags", "primitive", "function_used", "n", "status",
          "timer_s_median", "p0_timer_MB", "p0_timer_rounds", "allparties_timer_MB", "op_p0_online_rounds",
          "op_p0_offline_rounds", "op_allparties_online_MB", "op_allparties_offline_MB", "mat_M", "mat_K", "mat_P",
          "check_maxabs_err"]


def program(prim: str, n: int, shape: tuple[int, int, int] | None, trunc_pr: bool) -> str:
    lines = [f"sfix.set_precision({F}, {K})", f"cfix.set_precision({F}, {K})",
             "from Compiler import library, ml, mpc_math"]
    if trunc_pr:
        lines.append("program.use_trunc_pr = True")
    if shape:
        m, k, p = shape
        lines += [f"a = sfix.Matrix({m}, {k})", "a.input_from(0)", f"b = sfix.Matrix({k}, {p})", "b.input_from(0)",
                  "start_timer(1)", "z = a.dot(b)" if prim == "matmul" else "z = a", "stop_timer(1)",
                  "print_ln('MPCVIT_OUT 0 %s', z[0].reveal())"]
    else:
        lines += [f"n = {n}", "xa = sfix.Array(n)", "xa.input_from(0)", "ya = sfix.Array(n)", "ya.input_from(0)",
                  "x = xa.get_vector()", "y = ya.get_vector()", "start_timer(1)",
                  f"z = {PRIMITIVES[prim][0]}" if prim in PRIMITIVES else "z = x", "stop_timer(1)",
                  "z = z if isinstance(z, sfix) else sfix._new(z)",
                  "print_ln('MPCVIT_OUT 0 %s', z.get_vector(0, min(n, 64)).reveal())"]
    return "\n".join(lines) + "\n"


def inputs(prim: str, n: int, shape, rng: np.random.Generator) -> np.ndarray:
    if shape:
        m, k, p = shape
        return rng.uniform(-1, 1, m * k + k * p)
    lo, hi = PRIMITIVES.get(prim, ("", (-3, 3), ""))[1]
    return np.concatenate([rng.uniform(lo, hi, n), rng.uniform(-3, 3, n)])


def expected(prim: str, x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    from scipy.special import erf

    table = {"mul_sfix": lambda: x * y, "trunc": lambda: x * 0.3700103759765625, "exp": lambda: np.exp(x),
             "recip_div": lambda: 1 / x, "invsqrt": lambda: 1 / np.sqrt(x),
             "gelu": lambda: 0.5 * x * (1 + erf(x / np.sqrt(2))), "relu": lambda: np.maximum(x, 0),
             "recip_nearest": lambda: 1 / x}
    return table[prim]() if prim in table else None


def measure(mpspdz, protocol: str, prim: str, n: int, shape, tmp: Path, timeout_s: float) -> dict:
    """One run; the parsed figures of every process (party 0 first) and the error on the revealed values."""
    profile = Profile(spec=profile_spec(protocol))  # flags and truncation only (its cost is what is measured)
    spec = protocol_spec(protocol)
    rng = np.random.default_rng(0)
    values = inputs(prim, n, shape, rng)
    name = f"cal_{prim}_{n}"
    work = tmp / name
    work.mkdir(parents=True)
    (work / f"{name}.mpc").write_text(program(prim, n, shape, profile.trunc == "trunc_pr"))
    (work / "input").write_text(" ".join(f"{v:.6f}" for v in values) + "\n")
    root = make_overlay(mpspdz, work / "mp", spec, work / f"{name}.mpc")
    flags = [*profile.compile_flags]
    done = subprocess.run([sys.executable, "compile.py", *flags, name], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compile {name}: {(done.stdout + done.stderr)[-800:]}")
    install_inputs(root, {"Input-P0-0": work / "input", "Input-P1-0": work / "input"})  # text: input_from
    commands = spec.launch_commands(free_port_base(spec.processes + 1), name, ("-v",))
    results = run_parties(commands, root, timeout_s, work / "logs", spec.process_names())
    stats = [parse_party_output(r.output, f"{protocol} {name} process {i}") for i, r in enumerate(results)]
    error = None
    if not shape and prim in PRIMITIVES:
        line = re.search(r"^MPCVIT_OUT 0 (.*)$", results[0].output, re.M)
        want = expected(prim, values[:n], values[n:])
        if line is not None and want is not None:
            got = np.array([float(v) for v in re.findall(r"[-+]?[\d.]+(?:e[-+]?\d+)?", line.group(1))])
            error = float(np.abs(got - want[:len(got)]).max())
    return {"stats": stats, "compile_cmd": " ".join(["./compile.py", *flags, name]), "error": error,
            "spec": spec, "run_flags": " ".join([*spec.run_extra, "-v"])}


EXPECTED = re.compile(r"Expected communication is ([\d.e+-]+) MB online and ([\d.e+-]+) MB offline")
VM_ROUNDS = re.compile(r"^\s*(\d+) virtual machine rounds", re.M)


def estimate(mpspdz, protocol: str, prim: str, n: int, shape, tmp: Path) -> dict:
    """MP-SPDZ's compile-time estimate of one program: (online MB, offline MB, rounds), all parties."""
    spec, profile = protocol_spec(protocol), Profile(spec=profile_spec(protocol))
    name = f"cal_{prim}_{n}"
    work = tmp / name
    work.mkdir()
    (work / f"{name}.mpc").write_text(program(prim, n, shape, profile.trunc == "trunc_pr"))
    root = make_overlay(mpspdz, work / "mp", spec, work / f"{name}.mpc")
    done = subprocess.run([sys.executable, "compile.py", *profile.compile_flags, name], cwd=root,
                          capture_output=True, text=True)
    comm, rounds = EXPECTED.search(done.stdout), VM_ROUNDS.search(done.stdout)
    if done.returncode != 0 or comm is None or rounds is None:
        raise RuntimeError(f"compile {name}: {(done.stdout + done.stderr)[-800:]}")
    return {"online": float(comm.group(1)), "offline": float(comm.group(2)), "rounds": int(rounds.group(1)),
            "compile_cmd": " ".join(["./compile.py", *profile.compile_flags, name])}


def estimate_row(protocol: str, prim: str, n: int, shape, est: dict, base: dict) -> dict:
    online, offline = est["online"] - base["online"], est["offline"] - base["offline"]
    rounds = max(est["rounds"] - base["rounds"], 1)
    m, k, p = shape or ("", "", "")
    return {
        "protocol": protocol, "variant": "bud", "compile_cmd": est["compile_cmd"],
        "run_flags": "compile-only (MP-SPDZ's expected communication; not run)", "primitive": prim,
        "function_used": "sfix Matrix.dot" if shape else PRIMITIVES[prim][2], "n": m * p if shape else n,
        "status": "ok", "timer_s_median": 0.0, "p0_timer_MB": (online + offline) / 2, "p0_timer_rounds": rounds,
        "allparties_timer_MB": online + offline, "op_p0_online_rounds": rounds, "op_p0_offline_rounds": 0,
        "op_allparties_online_MB": online, "op_allparties_offline_MB": offline, "mat_M": m, "mat_K": k, "mat_P": p,
        "check_maxabs_err": ""}


def row(protocol: str, prim: str, n: int, shape, run: dict, base: dict) -> dict:
    spec, stats, ref = run["spec"], run["stats"], base["stats"]
    online, prep = stats[:spec.parties], stats[spec.parties:]
    ref_online, ref_prep = ref[:spec.parties], ref[spec.parties:]

    def phase(group, which, key):
        return sum(getattr(getattr(s, which), key) for s in group if getattr(s, which) is not None)

    def prep_bytes(group):  # a preprocessing process sends nothing online
        return sum(s.bytes_sent for s in group)

    p0 = stats[0].timers[1]
    prep0 = prep[0].timers[1] if prep else Phase(0.0, 0, 0)
    timer_all = sum(s.timers[1].bytes for s in stats if 1 in s.timers)
    off_rounds = prep0.rounds if prep else \
        min(max(stats[0].offline.rounds - ref[0].offline.rounds, 0), p0.rounds)
    m, k, p = shape or ("", "", "")
    return {
        "protocol": protocol, "variant": "bud", "compile_cmd": run["compile_cmd"], "run_flags": run["run_flags"],
        "primitive": prim, "function_used": "sfix Matrix.dot" if shape else PRIMITIVES[prim][2],
        "n": m * p if shape else n, "status": "ok", "timer_s_median": p0.seconds,
        "p0_timer_MB": (p0.bytes + prep0.bytes) / 1e6, "p0_timer_rounds": p0.rounds + prep0.rounds,
        "allparties_timer_MB": timer_all / 1e6,
        "op_p0_online_rounds": p0.rounds - (0 if prep else off_rounds), "op_p0_offline_rounds": off_rounds,
        "op_allparties_online_MB": max(phase(online, "online", "bytes") - phase(ref_online, "online", "bytes"), 0) / 1e6,
        "op_allparties_offline_MB": max(phase(online, "offline", "bytes") + prep_bytes(prep)
                                        - phase(ref_online, "offline", "bytes") - prep_bytes(ref_prep), 0) / 1e6,
        "mat_M": m, "mat_K": k, "mat_P": p, "check_maxabs_err": "" if run["error"] is None else f"{run['error']:.3g}",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocols", nargs="+", default=["rep4-ring", "ps-rep-ring", "trio", "astra"])
    p.add_argument("--primitives", nargs="+", default=[*PRIMITIVES, "matmul"])
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="n of the element-wise calls")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--repeats", type=int, default=1, help="runs per measured program; seconds: the fastest")
    args = p.parse_args(argv)
    mpspdz = find_mpspdz()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not args.out.is_file()
    with open(args.out, "a", newline="") as sink:
        writer = csv.DictWriter(sink, HEADER)
        if new:
            writer.writeheader()
        for protocol in args.protocols:
            spec = protocol_spec(protocol)
            compile_only = spec.needs_softspoken and kos_build(mpspdz)
            if not compile_only:
                check_protocol_ready(mpspdz, spec)
            baselines: dict = {}
            with tempfile.TemporaryDirectory(prefix="mpcvit-cal-") as tmp:
                tmp = Path(tmp)
                for prim in args.primitives:
                    cases = [(m * pp, (m, kk, pp)) for m, kk, pp in MATMULS] if prim == "matmul" else \
                        [(n, None) for n in args.sizes]
                    for n, shape in cases:
                        noop = "matnoop" if shape else "noop"
                        if compile_only:
                            if (n, shape) not in baselines:
                                baselines[n, shape] = estimate(mpspdz, protocol, noop, n, shape, tmp)
                            written = estimate_row(protocol, prim, n, shape,
                                                   estimate(mpspdz, protocol, prim, n, shape, tmp),
                                                   baselines[n, shape])
                        else:
                            if (n, shape) not in baselines:
                                baselines[n, shape] = measure(mpspdz, protocol, noop, n, shape, tmp, args.timeout)
                            runs = [measure(mpspdz, protocol, prim, n, shape, tmp / str(i), args.timeout)
                                    for i in range(args.repeats)]
                            written = row(protocol, prim, n, shape, runs[0], baselines[n, shape])
                            written["timer_s_median"] = min(r["stats"][0].timers[1].seconds for r in runs)
                        writer.writerow(written)
                        sink.flush()
                        print(f"{protocol} {prim} n={n}: {written['allparties_timer_MB']:.6g} MB all, "
                              f"{written['p0_timer_rounds']} rounds", flush=True)
                        for sub in tmp.iterdir():  # overlays hold FIFOs and logs: keep the temp folder small
                            shutil.rmtree(sub)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
