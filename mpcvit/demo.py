"""`mpcvit demo`: the README's main job on the offline digits set, end to end in a few minutes on 2 CPU cores.

softmax teacher → MPC-aware search (α per head) → binarise at μ → fresh retrain with KD → ONNX export (checked
against onnxruntime) → compile with the compiler's API and check its fixed-point reference against onnxruntime.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mpcvit.data import load_dataset
from mpcvit.export import export_onnx
from mpcvit.pipeline import build_model_config, load_teacher, retrain_config, search_summary, train_stage
from mpcvit.recipes import recipe
from mpcvit.search import CostTable, check_fraction, compiler_cost_table
from mpcvit.train import dataset_info, load_checkpoint

MODEL = "vit_2_4_8"
SEARCH_EPOCHS = 30
SEARCH_LAMBDA = 0.1
KD = dict(kd_ce_weight=1.0, kd_logit_weight=1.0, kd_token_weight=1.0, kd_temperature=1.0)


def search_cost_table(cfg: Any, protocol: str) -> tuple[CostTable | None, str]:
    """The compiler's cost table for this shape when its cost model is available, else the paper's L1 fallback."""
    try:
        return compiler_cost_table(cfg, protocol, "lan"), f"compiler.cost.cost_table({protocol}, lan)"
    except ImportError:
        return None, "L1 on alpha (compiler.cost not available)"


def compile_and_check(onnx_path: Path, out_dir: Path, protocol: str) -> dict[str, Any]:
    """Compile with ``compiler.api.compile_onnx`` and keep its reference-vs-onnxruntime check and cost totals."""
    try:
        from compiler.api import compile_onnx
    except ImportError:
        return {"skipped": "compiler.api is not available in this checkout"}
    result = compile_onnx(onnx_path, out_dir, protocol=protocol, check=True)
    check = result.check.as_dict() if result.check is not None else {}
    check.pop("layers", None)
    report = {"out_dir": str(out_dir), "protocol": protocol, "check": check,
              "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
              "estimated_lan_latency_s": result.cost.latency("lan"),
              "estimated_wan_latency_s": result.cost.latency("wan")}
    return json.loads(json.dumps(report, default=str))


def run_demo(out: str | Path, mu: float = 0.5, protocol: str = "replicated-ring", compile_check: bool = True,
             progress: bool = True) -> dict[str, Any]:
    check_fraction(mu, "--mu")  # before minutes of teacher training and search, not after
    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("digits")
    train_cfg = recipe("digits")
    stage_seconds: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        stage_seconds[name] = round(time.time() - t0, 1)
        print(f"[demo] {name}: {stage_seconds[name]} s", flush=True)

    t0 = time.time()
    teacher_cfg = build_model_config(MODEL, data)
    _, teacher_fit = train_stage(teacher_cfg, data, train_cfg, out / "teacher.pt", progress=progress, desc="teacher")
    stage("teacher", t0)

    t0 = time.time()
    search_cfg = teacher_cfg.replace(search=True)
    table, cost_source = search_cost_table(search_cfg, protocol)
    search_train = train_cfg.replace(epochs=SEARCH_EPOCHS, search_lambda=SEARCH_LAMBDA)
    searched, search_fit = train_stage(search_cfg, data, search_train, out / "search.pt", cost_table=table,
                                       progress=progress, desc="search")
    stage("search", t0)

    t0 = time.time()
    student_cfg = retrain_config(load_checkpoint(out / "search.pt"), mu)
    teacher = load_teacher(out / "teacher.pt", student_cfg)
    student, student_fit = train_stage(student_cfg, data, train_cfg.replace(**KD), out / "mpcvit.pt",
                                       teacher=teacher, progress=progress, desc="retrain+KD")
    stage("retrain", t0)

    t0 = time.time()
    exported = export_onnx(student, out / "mpcvit_digits.onnx", dataset_info(data), data.sample_input())
    stage("export", t0)

    compile_report: dict[str, Any] = {"skipped": "--no-compile"}
    if compile_check:
        t0 = time.time()
        compile_report = compile_and_check(exported.path, out / "compiled", protocol)
        stage("compile", t0)

    report = {
        "teacher_test_accuracy": teacher_fit.test_accuracy,
        "mpcvit_test_accuracy": student_fit.test_accuracy,
        "search_test_accuracy": search_fit.test_accuracy,
        "accuracy_drop_points": round(100 * (teacher_fit.test_accuracy - student_fit.test_accuracy), 2),
        "mu": mu,
        "head_kinds": student_cfg.head_kinds,
        "mlp_kinds": student_cfg.mlp_kinds,
        "alpha": search_summary(searched),
        "search_cost": cost_source,
        "onnx_path": str(exported.path),
        "onnx_max_abs_error": exported.max_abs_error,
        "compile": compile_report,
        "model": MODEL,
        "stage_seconds": stage_seconds,
        "seconds": round(time.time() - start, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"teacher (softmax) test accuracy {100 * report['teacher_test_accuracy']:.2f}%")
    print(f"MPCViT mu={mu} + KD test accuracy {100 * report['mpcvit_test_accuracy']:.2f}% "
          f"(drop {report['accuracy_drop_points']:.2f} points)")
    print(f"head kinds {student_cfg.head_kinds}")
    print(f"ONNX {exported.path} (onnxruntime max abs error {exported.max_abs_error:.2g})")
    if "check" in compile_report:
        check = compile_report["check"]
        print(f"compiled for {protocol} into {compile_report['out_dir']}: fixed-point reference vs onnxruntime "
              f"max logit error {check['max_logit_error']:.3g}, top-1 agreement {100 * check['top1_agreement']:.1f}% "
              f"on {check['samples']} {check['source']}")
    else:
        print(f"compile: {compile_report['skipped']}")
    print(f"total {report['seconds']} s; report {out / 'report.json'}")
    return report
