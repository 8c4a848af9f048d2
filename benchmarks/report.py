"""Tables and plots from a benchmark results file (JSON lines of `benchmarks/matrix.py`).

* `results.md`: one row per cell (cost model and measured figures), the cost model's error against MP-SPDZ, the
  speed-up over the naive `ml` baseline;
* `pareto_<protocol>.png`: accuracy × latency per attention configuration, the Pareto front joined;
* `breakdown_<protocol>.png`: the cost model's bytes and rounds per op kind, so the softmax share is visible;
* `results.csv`: the flat table.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import UserError

COST_TOLERANCE = 0.25


def read_records(results: Path) -> list[dict[str, Any]]:
    """The records of a results file; a damaged line is a one-line error naming the file and line."""
    records = []
    for number, line in enumerate(results.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "key" not in record:
            raise UserError(f"{results}:{number}: not a benchmark record; delete that line (or the file) and rerun")
        records.append(record)
    return records


def load(results: Path) -> list[dict[str, Any]]:
    """One record per cell: a cell measured again (e.g. `--real` after a cost-model pass) keeps its latest."""
    return list({record["key"]: record for record in read_records(results)}.values())


def per_execution(real: dict[str, Any]) -> dict[str, Any]:
    """A real run's totals divided by its executions (``runs``): per program execution, as the cost model prices."""
    runs = real.get("runs", 1) or 1
    phases = {phase: {key: value / runs for key, value in real[phase].items()}
              for phase in ("online", "offline") if real.get(phase)}
    return {**real, **phases, **{key: real[key] / runs for key in ("time_s", "bytes_party0", "global_bytes", "rounds")
                                 if real.get(key) is not None}}


def flat(record: dict[str, Any]) -> dict[str, Any]:
    """One table row; cost and real figures both per program execution (a batch of ``batch`` images)."""
    cost, real = record.get("cost") or {}, per_execution(record.get("real") or {})
    overrides = ",".join(f"{k}={v}" for k, v in (record.get("overrides") or {}).items())
    return {"model": record["model"] + (f"({overrides})" if overrides else ""), "weights": record["weights"],
            "attention": record["attention"], "mlp": record["mlp"],
            "protocol": record["protocol"] + (" online" if record.get("online_only") else ""),
            "network": record["network"], "templates": record["templates"], "batch": record["batch"],
            "cost_MB_p0": _mb(cost.get("bytes_p0")), "cost_MB_all": _mb(cost.get("bytes_all")),
            "cost_rounds": cost.get("rounds"), "cost_latency_s": record.get("cost_latency_s"),
            "real_time_s": real.get("time_s"), "real_MB_p0": _mb(real.get("bytes_party0")),
            "real_MB_all": _mb(real.get("global_bytes")), "real_rounds": real.get("rounds"),
            "real_latency_s": record["real_latency_s"] / (real.get("runs", 1) or 1)
            if record.get("real_latency_s") is not None else None, "top1_agreement": real.get("top1_agreement"),
            "images": real.get("images"), "plaintext_accuracy": record.get("plaintext_accuracy")}


def protocol_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, attention and protocol (LAN records of real runs): measured time, party-0 and all-party MB,
    rounds and the online/preprocessing split beside the cost model's figures. Measured online/offline: party 0's
    `-v` split (trio/astra: its preprocessing process's traffic is the offline part); the cost model's: all
    parties' bytes and party 0's rounds of each phase."""
    rows = []
    for r in records:
        real, cost = r.get("real") and per_execution(r["real"]), r.get("cost") or {}
        if r["network"] != "lan" or r.get("templates") != "mpcvit":
            continue
        online, offline = (real or {}).get("online") or {}, (real or {}).get("offline") or {}
        security = r.get("security") or {}
        rows.append({
            "model": r["model"], "attention": r["attention"], "protocol": r["protocol"],
            "security": f"{security.get('adversary', '?')}, {security.get('majority', '?')} majority",
            "time_s": real and real["time_s"], "MB_p0": real and _mb(real["bytes_party0"]),
            "MB_all": real and _mb(real["global_bytes"]), "rounds": real and real["rounds"],
            "online_MB_p0": _mb(online.get("bytes")), "offline_MB_p0": _mb(offline.get("bytes")),
            "online_rounds": online.get("rounds"), "offline_rounds": offline.get("rounds"),
            "cost_MB_p0": _mb(cost.get("bytes_p0")), "cost_MB_all": _mb(cost.get("bytes_all")),
            "cost_rounds": cost.get("rounds"), "cost_online_MB_all": _mb(cost.get("online_bytes_all")),
            "cost_offline_MB_all": _mb(cost.get("offline_bytes_all")), "cost_lan_s": r.get("cost_latency_s"),
            "top1_agreement": real and real.get("top1_agreement")})
    return sorted(rows, key=lambda row: (row["model"], row["attention"], row["protocol"]))


def _mb(value: float | None) -> float | None:
    return None if value is None else value / 1e6


def cost_model_errors(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Relative error of the cost model's bytes (party 0, all) and rounds against the measured run, per program."""
    rows, seen = [], set()
    for r in records:
        if not r.get("real") or not r.get("cost"):
            continue
        key = r["key"].replace(f"/{r['network']}/", "/")  # one row per program, whatever the network model
        if key in seen:
            continue
        seen.add(key)
        real, cost, runs = r["real"], r["cost"], r["real"].get("runs", 1)  # the cost model prices one execution
        if r.get("online_only"):  # the cost model's online part; 2-party semi2k is symmetric: party 0 sends half
            cost = {"bytes_p0": cost["online_bytes_all"] / 2, "bytes_all": None, "rounds": cost["online_rounds"]}
        errors = {"bytes_p0": cost["bytes_p0"] * runs / real["bytes_party0"] - 1,
                  "bytes_all": cost["bytes_all"] * runs / real["global_bytes"] - 1
                  if real.get("global_bytes") and cost["bytes_all"] else None,
                  "rounds": cost["rounds"] * runs / real["rounds"] - 1}
        rows.append({"program": key, **errors,
                     "within": all(abs(e) <= COST_TOLERANCE for e in errors.values() if e is not None)})
    return rows


def baseline_speedups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """mpcvit vs the `ml` baseline for the same model/protocol/network (measured)."""
    ours = {r["key"].replace("/mpcvit/", "/ml_baseline/"): r for r in records
            if r["templates"] == "mpcvit" and r.get("real")}
    rows = []
    for base in records:
        mine = ours.get(base["key"])
        if base["templates"] != "ml_baseline" or not base.get("real") or mine is None:
            continue
        rows.append({"program": mine["key"].replace("/mpcvit", ""),
                     "rounds_ratio": base["real"]["rounds"] / mine["real"]["rounds"],
                     "latency_ratio": base["real_latency_s"] / mine["real_latency_s"],
                     "time_ratio": base["real"]["time_s"] / mine["real"]["time_s"]})
    return rows


def softmax_ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Latency of the all-softmax model over each other attention/MLP configuration (same model, protocol, network;
    measured where real runs exist, else the cost model) — MPCViT's headline figure."""
    def group(r: dict[str, Any]) -> tuple:
        return (r["model"], str(r.get("overrides")), r["weights"], r["protocol"], r.get("online_only"),
                r["network"], r["batch"])

    ours = [r for r in records if r["templates"] == "mpcvit"]
    reference = {group(r): r for r in ours if r["attention"] == "softmax" and r["mlp"] == "gelu"}
    rows = []
    for r in ours:
        ref = reference.get(group(r))
        if ref is None or r is ref:
            continue
        rows.append({"model": r["model"], "protocol": r["protocol"], "network": r["network"],
                     "config": f"{r['attention']}/{r['mlp']}", "softmax_latency_s": _latency(ref),
                     "latency_s": _latency(r), "speedup": _latency(ref) / _latency(r),
                     "measured": bool(r.get("real"))})
    return rows


def shape_rounds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rounds of each swept model shape (`--vary`), ours against the `ml` baseline."""
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        if not r.get("overrides") or not r.get("real"):
            continue
        shape = ",".join(f"{k}={v}" for k, v in r["overrides"].items())
        row = rows.setdefault(f"{r['model']}({shape})/{r['protocol']}", {"program": f"{r['model']}({shape})",
                                                                          "protocol": r["protocol"]})
        row[f"{r['templates']}_rounds"] = r["real"]["rounds"] / r["real"].get("runs", 1)
        if r.get("cost_by_op"):
            row["cost_attention_rounds"] = r["cost_by_op"].get("attention", {}).get("rounds")
    return list(rows.values())


def peer_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """mpcvit (measured under MP-SPDZ where run, else the cost model's figures, so labelled) next to each peer's
    measured figures, per model: time, bytes per party, rounds (MP-SPDZ) or send actions (SPU), logit error."""
    rows, seen = [], set()
    for record in records:
        model = f"{record['model']}/{record['attention']}/{record['mlp']}"
        real, cost = record.get("real"), record.get("cost") or {}
        if (model, record["protocol"], record.get("online_only")) not in seen:
            seen.add((model, record["protocol"], record.get("online_only")))
            rows.append({"model": model, "system": f"mpcvit {record['protocol']}" + ("" if real else " (cost model)"),
                         "time_s": real["time_s"] if real else cost.get("compute_s"),
                         "MB_p0": _mb(real["bytes_party0"] if real else cost.get("bytes_p0")),
                         "MB_all": _mb(real["global_bytes"] if real else cost.get("bytes_all")),
                         "rounds_or_sends": real["rounds"] if real else cost.get("rounds"),
                         "max_logit_error": real.get("max_logit_error") if real else None})
        for name, peer in record["peer"].items():
            if (model, name) not in seen:
                seen.add((model, name))
                rows.append({"model": model, "system": peer["system"], "time_s": peer["time_s"],
                             "MB_p0": _mb(peer["bytes_party0"]), "MB_all": _mb(peer["bytes_all"]),
                             "rounds_or_sends": peer["sends"], "max_logit_error": peer["max_logit_error"]})
    return sorted(rows, key=lambda row: row["model"])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(latency, accuracy) points not dominated by a faster-and-at-least-as-accurate one, by latency."""
    front, best = [], -np.inf
    for latency, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((latency, accuracy))
            best = accuracy
    return front


def plot_pareto(records: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for protocol in sorted({r["protocol"] for r in records}):
        for network in sorted({r["network"] for r in records}):
            rows = [r for r in records if r["protocol"] == protocol and r["network"] == network
                    and r["templates"] == "mpcvit" and _accuracy(r) is not None]
            if not rows:
                continue
            fig, ax = plt.subplots(figsize=(5, 3.5))
            points = [(_latency(r), _accuracy(r)) for r in rows]
            for r, (x, y) in zip(rows, points):
                ax.scatter(x, y)
                ax.annotate(f"{r['model']} {r['attention']}/{r['mlp']}", (x, y), fontsize=6)
            front = pareto_front(points)
            ax.plot(*zip(*front), "k--", linewidth=0.8, label="Pareto front")
            ax.set_xlabel(f"latency, {network} (s; {'measured + network model' if rows[0].get('real') else 'cost model'})")
            ax.set_ylabel("test accuracy (plaintext)" if rows[0].get("plaintext_accuracy") is not None
                          else "top-1 agreement with plaintext")
            ax.set_title(f"{protocol}")
            ax.legend(fontsize=7)
            written.append(_save(fig, out / f"pareto_{protocol}_{network}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _latency(record: dict[str, Any]) -> float:
    return record["real_latency_s"] if record.get("real_latency_s") is not None else record["cost_latency_s"]


def _accuracy(record: dict[str, Any]) -> float | None:
    if record.get("plaintext_accuracy") is not None:
        return record["plaintext_accuracy"]
    return (record.get("real") or {}).get("top1_agreement")


def plot_breakdown(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """Stacked bars per attention config: the cost model's all-party MB and rounds per op kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for protocol in sorted({r["protocol"] for r in records}):
        rows = {(r["model"], r["attention"], r["mlp"]): r for r in records
                if r["protocol"] == protocol and r.get("cost_by_op") and not r.get("online_only")}
        if not rows:
            continue
        ops = sorted({op for r in rows.values() for op in r["cost_by_op"]})
        labels = [f"{m}\n{a}/{p}" for m, a, p in rows]
        fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 * len(rows) + 3), 4))
        for ax, metric, title in ((axes[0], "bytes_all", "MB (all parties)"), (axes[1], "rounds", "rounds")):
            bottom = np.zeros(len(rows))
            for op in ops:
                values = np.array([r["cost_by_op"].get(op, {}).get(metric, 0.0) for r in rows.values()])
                values = values / 1e6 if metric == "bytes_all" else values
                ax.bar(labels, values, bottom=bottom, label=op)
                bottom += values
            ax.set_title(title, fontsize=9)
            ax.tick_params(axis="x", labelsize=6)
        fig.suptitle(f"{protocol}: cost per op kind (cost model)", fontsize=10)
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        written.append(_save(fig, out / f"breakdown_{protocol}.png"))
    return written


def write_report(results: Path, out: Path) -> str:
    """Write results.md / results.csv / plots into `out`; returns the markdown."""
    records = load(results) if results.is_file() else []
    if not records:
        raise UserError(f"{results}: no benchmark records to report; measure some cells first")
    out.mkdir(parents=True, exist_ok=True)
    rows = [flat(r) for r in records]
    with open(out / "results.csv", "w", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sections = ["# Benchmark results", "", f"source: `{results}`; real_latency_s: measured local time + network "
                "model (rounds × one-way latency + party-0 bytes / bandwidth; `tc netem` unavailable); "
                "cost_latency_s: the cost model's conservative estimate (rounds × round-trip time + all parties' "
                "bytes / bandwidth + modelled compute), so the two differ by construction; cost and real figures "
                "per program execution (one batch of `batch` images; a run of several executions is divided)", "",
                markdown_table(rows)]
    protocols = protocol_table(records)
    if len({row["protocol"] for row in protocols}) > 1:
        sections += ["", "## Protocols side by side (LAN; measured, then the cost model's figures)", "",
                     markdown_table(protocols)]
    errors = cost_model_errors(records)
    if errors:
        sections += ["", f"## Cost model vs MP-SPDZ (relative error; tolerance ±{COST_TOLERANCE:.0%})", "",
                     markdown_table(errors)]
    speedups = baseline_speedups(records)
    if speedups:
        sections += ["", "## mpcvit vs the naive MP-SPDZ `ml` baseline (baseline / ours)", "",
                     markdown_table(speedups)]
    ratios = softmax_ratios(records)
    if ratios:
        sections += ["", "## Latency: all-softmax model / configuration", "", markdown_table(ratios)]
    shapes = shape_rounds(records)
    if shapes:
        sections += ["", "## Rounds per execution vs model shape (measured)", "", markdown_table(shapes)]
    peers = peer_rows([r for r in records if r.get("peer")])
    if peers:
        sections += ["", "## mpcvit vs SecretFlow SPU on the same ONNX (SPU: send actions in place of rounds)", "",
                     markdown_table(peers)]
    plots = plot_pareto(records, out) + plot_breakdown(records, out)
    sections += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    text = "\n".join(sections) + "\n"
    (out / "results.md").write_text(text)
    return text
