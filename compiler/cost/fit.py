"""Fit the per-primitive cost formulas of :mod:`compiler.cost.primitives` to MP-SPDZ measurements.

``python -m compiler.cost.fit [CSV ...]`` rewrites ``compiler/cost/fitted.py`` (CSVs default to the shared
:func:`default_costs_csv` for semi2k/dealer/replicated-ring plus :data:`PROTOCOL_COSTS`, this repository's
measurements by ``benchmarks/calibrate_protocols.py`` of the other protocols and of dealer under its profile's
run-time flags; a protocol a later CSV measures takes all its rows from there, see :func:`current_rows`).
The formulas (see :class:`compiler.cost.primitives.Formula`) are linear in a few features of n (elements of the
vectorised call; matmul: M·P outputs and M·K·P scalar products), the compile-time budget B and the run-time
preprocessing batch b; the chunk widths w (how much budget one element consumes) and v (how much of a batch)
are chosen by a small grid search minimising the worst relative error, the coefficients by non-negative
least squares on relative residuals. Matrix products are measured at large shapes only: the mul_sfix n=1 row
joins them as a 1×1×1 product so that their fixed terms (paid by every small product of a model) are not an
extrapolation (it was 53 online rounds per semi2k product; a real ViT layer's products take a few).
"""
from __future__ import annotations

import csv
import os
import sys
from itertools import product
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from compiler.cost.primitives import chunk_count

# CSV primitive -> step primitive it calibrates (composites such as exp_limit/rowmax are checked, not fitted)
FITTED_PRIMS = {
    "mul_sfix": "mul", "mul_sint": "mul_int", "ltz": "ltz", "relu": "relu", "trunc": "trunc",
    "exp": "exp:mpspdz", "recip_div": "reciprocal:mpspdz", "recip_nearest": "fpdiv_nearest",
    "recip_apprcr": "apprcr", "invsqrt": "rsqrt:mpspdz", "gelu": "gelu:mpspdz", "matmul": "matmul",
}
SHARED_ENV = "MPCVIT_SHARED"


def default_costs_csv() -> Path:
    """The measured MP-SPDZ primitive costs: ``$MPCVIT_SHARED/mpspdz-costs/mpspdz_costs.csv`` when that variable
    is set, else the ``shared/`` folder beside the repository (``<repo>/../shared``), wherever it is checked out."""
    shared = os.environ.get(SHARED_ENV)
    root = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared"
    return root / "mpspdz-costs" / "mpspdz_costs.csv"


PROTOCOL_COSTS = Path(__file__).with_name("data") / "protocol_costs.csv"
# calibrated by ../shared/mpspdz-costs (dealer, re-measured here under its run-time flags, keeps their objective)
SHARED_PROTOCOLS = ("semi2k", "dealer", "replicated-ring")
PROTOCOLS = {"semi2k": "semi2k", "dealer-ring": "dealer", "dealer": "dealer", "rep3-ring": "replicated-ring",
             "rep4-ring": "rep4-ring", "ps-rep-ring": "ps-rep-ring", "sy-rep-ring": "sy-rep-ring", "trio": "trio",
             "astra": "astra", "spdz2k": "spdz2k", "hemi": "hemi"}
GRID = (1 / 8, 1 / 4, 1 / 2, 1, 3 / 2, 2, 3, 4, 8)
CAPS = (2000.0, 4000.0, 8000.0, 16000.0, 32000.0, 1e9)
MARGINAL_MIN, MARGINAL_WEIGHTS, ROW_TOLERANCE = 1000, (8.0, 4.0, 2.0, 1.5, 1.0), 0.22
OUT = Path(__file__).with_name("fitted.py")


def load_rows(path: str | Path) -> list[dict]:
    """The ok rows of the measurement CSV, with parsed numbers and the step primitive they calibrate."""
    rows = []
    with open(path, newline="") as source:
        measured = list(csv.DictReader(source))
    for r in measured:
        if r["status"] != "ok" or r["primitive"] in ("noop", "matnoop"):
            continue
        is_mat = r["primitive"] == "matmul"
        shape = (int(r["mat_M"]), int(r["mat_K"]), int(r["mat_P"])) if is_mat else ()
        rows.append({
            "source": Path(path).name, "protocol": PROTOCOLS[r["protocol"]], "primitive": r["primitive"],
            "variant": r["variant"], "n": int(r["n"]), "shape": shape,
            "budget": 100000 if "-b 100000" in r["compile_cmd"] else 1000,
            "batch": _run_batch(r["run_flags"]),
            "bytes_p0": float(r["p0_timer_MB"]) * 1e6, "bytes_all": float(r["allparties_timer_MB"]) * 1e6,
            "rounds": float(r["p0_timer_rounds"]), "seconds": float(r["timer_s_median"]),
            "on_rounds": float(r["op_p0_online_rounds"] or 0), "off_rounds": float(r["op_p0_offline_rounds"] or 0),
            "on_bytes_all": float(r["op_allparties_online_MB"] or 0) * 1e6,
            "off_bytes_all": float(r["op_allparties_offline_MB"] or 0) * 1e6,
            "estimated": r["run_flags"].startswith("compile-only"),  # MP-SPDZ's estimate, not a run
        })
    return rows


def _run_batch(flags: str) -> int:
    """The run-time preprocessing batch of a row's party flags (``-b N``); 1000 when not given (the rows of the
    shared calibration without ``-b`` are fitted as the model's default batch)."""
    words = flags.split()
    return int(words[words.index("-b") + 1]) if "-b" in words else 1000


def current_rows(paths: list[str | Path]) -> list[dict]:
    """The rows of every CSV in ``paths``, where a protocol that a later CSV measures takes all its rows from the
    later one (this repository re-measures a shared protocol when its profile's flags change: dealer's -d -b)."""
    tables = [load_rows(path) for path in paths]
    rows: list[dict] = []
    for index, table in enumerate(tables):
        later = {r["protocol"] for t in tables[index + 1:] for r in t}
        rows += [r for r in table if r["protocol"] not in later]
    return rows


def _volume(row: dict) -> tuple[float, float]:
    """(outputs, work): element-wise ops n, n; matmul M·P, M·K·P."""
    if row["shape"]:
        m, k, p = row["shape"]
        return float(m * p), float(m * k * p)
    return float(row["n"]), float(row["n"])


def _solve(features: np.ndarray, target: np.ndarray, relative_to: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Non-negative coefficients minimising the worst error relative to ``relative_to`` (default: the target)
    (Lawson's reweighted least squares)."""
    scale = 1.0 / np.maximum(target if relative_to is None else relative_to, 1e-9)
    lawson = np.ones_like(target)
    best: tuple[np.ndarray, float] | None = None
    for _ in range(40):
        weight = scale * np.sqrt(lawson)
        coef, _ = nnls(features * weight[:, None], target * weight)
        rel = np.abs(features @ coef - target) * scale
        if best is None or rel.max() < best[1]:
            best = (coef, float(rel.max()))
        lawson = lawson * (rel + 1e-12)
        lawson /= lawson.sum()
    assert best is not None
    return best


def _fit_chunked(rows: list[dict], key: str, limit_key: str, relative_to: str | None = None
                 ) -> tuple[list[float], float]:
    """target = a + c·chunk_count(outputs, w, limit, cap) + d·work/1000 (matmul only): best w (and cap) on a grid.

    Online rounds chunk by the compile budget (no cap); offline rounds count preprocessing batches, where a
    run-time batch larger than ``cap`` does not help further."""
    target = np.array([r[key] for r in rows])
    offline = limit_key == "batch"
    caps = CAPS if offline else (1e18,)
    if not target.any():
        return [0.0, 0.0, 1.0, 0.0, caps[-1]], 0.0
    best: tuple[list[float], float] | None = None
    has_work = any(r["shape"] for r in rows)
    for w, cap in product(GRID, caps):
        cols = [[1.0, chunk_count(_volume(r)[0], w, r[limit_key], cap, offline)]
                + ([_volume(r)[1] / 1000] if has_work else []) for r in rows]
        coef, err = _solve(np.array(cols), target,
                           None if relative_to is None else np.array([r[relative_to] for r in rows]))
        cand = [float(coef[0]), float(coef[1]), w, float(coef[2]) if has_work else 0.0, cap]
        if best is None or err < best[1] - 1e-9:
            best = (cand, err)
    assert best is not None
    return best


def _online_value(coef: list[float], row: dict) -> float:
    outputs, work = _volume(row)
    return coef[0] + coef[1] * chunk_count(outputs, coef[2], row["budget"], coef[4], False) + coef[3] * work / 1000


def _fit_linear(rows: list[dict], key: str) -> list[float]:
    """target = a + b·outputs + c·work (+ d·(M·K + K·P) for matmul).

    A program issues many calls, so what it pays per element is the slope of the *large* calls (outputs >=
    MARGINAL_MIN), while the small calls measure mostly the one-time setup. The large calls' errors weigh the
    largest factor of MARGINAL_WEIGHTS that still keeps every measured row within ROW_TOLERANCE."""
    target = np.array([r[key] for r in rows])
    cols = []
    for r in rows:
        outputs, work = _volume(r)
        operands = float(r["shape"][0] * r["shape"][1] + r["shape"][1] * r["shape"][2]) if r["shape"] else 0.0
        cols.append([1.0, outputs, work if r["shape"] else 0.0, operands])
    features = np.array(cols)
    large = features[:, 1] >= MARGINAL_MIN
    for weight in MARGINAL_WEIGHTS:
        coef, _ = _solve(features, target, target / np.where(large, weight, 1.0))
        if np.max(np.abs(features @ coef - target) / np.maximum(target, 1e-9)) <= ROW_TOLERANCE:
            break
    return [float(c) for c in coef]


def fit(rows: list[dict]) -> dict[tuple[str, str], dict]:
    fits = {}
    for protocol, (csv_prim, prim) in product(PROTOCOLS.values(), FITTED_PRIMS.items()):
        sel = [r for r in rows if r["protocol"] == protocol and r["primitive"] == csv_prim]
        if not sel:
            continue
        if prim == "matmul":  # a 1×1×1 product is one multiplication: anchors the fixed terms at small shapes
            # (not for compile-time estimates: the compiler counts a lone product's rounds unlike a matrix's)
            sel = sel + [{**r, "shape": (1, 1, 1)} for r in rows if r["protocol"] == protocol
                         and r["primitive"] == "mul_sfix" and r["n"] == 1 and not r["estimated"]]
        on, _ = _fit_chunked(sel, "on_rounds", "budget")
        for r in sel:  # offline = what the timer saw beyond the fitted online rounds (keeps the total exact)
            r["rest_rounds"] = max(r["rounds"] - _online_value(on, r), 0.0)
        # this repository's protocols fit offline rounds for the total's error: sy-rep-ring's preprocessing comes in
        # batches (15 offline rounds at n=1 and 64, 1,141 at 4,096), whose few rounds at small n must not outweigh
        # the large call; the shared calibration's protocols keep the original objective (their committed fits)
        off, _ = _fit_chunked(sel, "rest_rounds", "batch", None if protocol in SHARED_PROTOCOLS else "rounds")
        big = max(sel, key=lambda r: _volume(r)[1])
        moved = big["on_bytes_all"] + big["off_bytes_all"]
        fits[(protocol, prim)] = {
            "online_rounds": on, "offline_rounds": off,
            "bytes_all": _fit_linear(sel, "bytes_all"), "bytes_p0": _fit_linear(sel, "bytes_p0"),
            "online_share": round(big["on_bytes_all"] / moved, 4) if moved else 1.0,
            "seconds": _fit_linear([r for r in sel if r["variant"] == "def"] or sel, "seconds"),
        }
    return fits


def rounded(fits: dict) -> dict:
    """The coefficients as stored in fitted.py (6 significant digits)."""
    return {key: {k: ([float(f"{x:.6g}") for x in v] if isinstance(v, list) else v) for k, v in val.items()}
            for key, val in fits.items()}


def write(fits: dict, source: str) -> None:
    lines = [f'"""GENERATED by `python -m compiler.cost.fit {source}`: coefficients of the cost formulas.',
             "",
             "Key (protocol, step primitive). online_rounds / offline_rounds: [fixed, per chunk, chunk width, per 1000",
             "scalar products, batch cap]; bytes_*/seconds: [fixed, per output, per scalar product, per operand];",
             'online_share: the online part of bytes_all."""',
             "FITS: dict[tuple[str, str], dict] = {"]
    for key, val in rounded(fits).items():
        lines.append(f"    {key!r}: {val!r},")
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    paths = sys.argv[1:] or [str(default_costs_csv()), str(PROTOCOL_COSTS)]
    write(fit(current_rows(paths)), " ".join(Path(path).name for path in paths))
    print(f"wrote {OUT}")
