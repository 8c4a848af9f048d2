"""Big models (issue 11): compile a timm ViT-B/16 (and ViT-L/16) at 224 px; peak RSS, time and input file sizes.

Each compile runs in its own child process (``mpcvit-compile``'s API, replicated-ring, batch 1, calibrated as by
default on 32 random N(0, 1) images, or ``--calibration-images N``); its peak RSS is the child's own ``ru_maxrss``
(``os.wait4``), deterministic up to allocator noise, and the primary figure. Times are indicative: the machine is
shared. ``--before REF`` compiles the same models with the code of git revision REF too (unpacked by ``git archive``
into a temporary folder), for the before/after table.

Models are timm's with random weights (seed 0; nothing is downloaded), exported once by torch's dynamo exporter
(opset 18) with the weights in an external data file, cached under ``--cache``.

    python -m benchmarks.bigmodel                                    # ViT-B/16, this checkout
    python -m benchmarks.bigmodel --before main                      # and main's code, for comparison
    python -m benchmarks.bigmodel --models vit_large_patch16_224     # ViT-L/16 (~2 min, ~6 GB)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
MARKER = "MPCVIT_BIGMODEL"
# the child: one compile, its stage timings on the last line (compile_onnx's API is the same before and after)
CHILD = f"""
import json, sys, time
import numpy as np
from compiler.api import compile_onnx
onnx_path, out, calibration = sys.argv[1:4]
start = time.perf_counter()
result = compile_onnx(onnx_path, out, protocol="replicated-ring", calibration=calibration or None)
weights = sum(int(np.prod(w["shape"])) for w in result.manifest.weights)
print("{MARKER}", json.dumps({{"wall_s": time.perf_counter() - start, "timings": result.timings, "weights": weights}}))
"""


def export_timm(name: str, cache: Path) -> Path:
    """``cache/<name>.onnx`` (+ ``.onnx.data``): timm ``name``, random weights (seed 0), input 1x3x224x224."""
    path = cache / f"{name}.onnx"
    if path.is_file() and Path(f"{path}.data").is_file():
        return path
    import logging
    import warnings

    import timm
    import torch

    if name not in timm.list_models():
        raise UserError(f"--models {name}: not a timm model (e.g. vit_base_patch16_224, vit_large_patch16_224)")
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=True, opset_version=18,
                          external_data=True, input_names=["image"], output_names=["logits"])
    return path


def checkout(ref: str, into: Path) -> Path:
    """The code of git revision ``ref`` of this repository, unpacked under ``into``."""
    done = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref], capture_output=True)
    if done.returncode != 0:
        raise UserError(f"--before {ref}: git archive failed ({done.stderr.decode().strip()}); give a commit or "
                        f"branch of {REPO}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into


def compile_in_child(code: Path, onnx_path: Path, out: Path, calibration: Path | None) -> dict[str, Any]:
    """Compile in a child process running ``code``'s compiler; its figures plus peak RSS (bytes) and file sizes."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(onnx_path), str(out), str(calibration or "")],
                             cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in output.splitlines() if line.startswith(MARKER)]
    if child.returncode != 0 or not lines:
        tail = "\n".join(output.rstrip().splitlines()[-5:])
        raise UserError(f"compiling {onnx_path.name} with the code in {code} failed (exit {child.returncode}):\n{tail}")
    figures = json.loads(lines[-1][len(MARKER):])
    files = sorted((out / "Player-Data").iterdir())
    figures.update(peak_rss_bytes=usage.ru_maxrss * 1024,  # Linux: kilobytes
                   input_files={f.name: f.stat().st_size for f in files})
    return figures


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model':<24} {'code':<10} {'peak RSS':>9} {'wall':>7} {'frontend':>8} {'lowering':>8} {'emit':>7} "
             f"{'party 0 input':>14} {'B/weight':>8} {'party 1 input':>14}",
             f"{'':<24} {'':<10} {'GB':>9} {'s':>7} {'s':>8} {'s':>8} {'s':>7} {'MB':>14} {'':>8} {'MB':>14}"]
    for r in rows:
        files = r["input_files"]
        p0 = sum(size for name, size in files.items() if "-P0-" in name)
        p1 = sum(size for name, size in files.items() if "-P1-" in name)
        t = r["timings"]
        lines.append(f"{r['model']:<24} {r['code']:<10} {r['peak_rss_bytes'] / 1e9:>9.2f} {r['wall_s']:>7.1f} "
                     f"{t['frontend_s']:>8.1f} {t['lowering_s']:>8.1f} {t['emit_s']:>7.1f} {p0 / 1e6:>14.1f} "
                     f"{p0 / r['weights']:>8.2f} {p1 / 1e6:>14.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bigmodel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit_base_patch16_224"], help="timm model names")
    p.add_argument("--before", metavar="REF", default=None,
                   help="also compile with the code of this git revision (e.g. main), for the before column")
    p.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help="calibrate on N random images (--calibrate) instead of the default 32 check samples")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mpcvit-bigmodel",
                   help="where the exported models are kept (default: the system temp folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)

    def body() -> int:
        rows = []
        with tempfile.TemporaryDirectory(prefix="mpcvit-bigmodel-") as tmp:
            work = Path(tmp)
            calibration = None
            if args.calibration_images is not None:
                calibration = work / "calibration.npz"
                np.savez(calibration, x=np.random.default_rng(0).standard_normal(
                    (args.calibration_images, 3, 224, 224)))
            codes = [("this", REPO)]
            if args.before:
                codes.insert(0, (args.before, checkout(args.before, work / "before")))
            for name in args.models:
                onnx_path = export_timm(name, args.cache)
                for label, code in codes:
                    out = work / f"{name}-{label}"
                    rows.append({"model": name, "code": label,
                                 **compile_in_child(code, onnx_path, out, calibration)})
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
        print(f"\nreplicated-ring, batch 1, calibrated on "
              f"{args.calibration_images or 32} random images; peak RSS of the compiling process (primary), "
              f"times indicative (shared machine)")
        print(table(rows))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
