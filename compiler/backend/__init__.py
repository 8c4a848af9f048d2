"""Backend: a lowered program -> ``OUT/<name>.mpc``, input files, ``manifest.json`` and ``run.sh``, atomically."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compiler.backend.inputs import WEIGHT_DTYPE, input_file, per_image_layout, write_client_input, write_weights
from compiler.backend.manifest import Manifest, parse_metadata
from compiler.backend.render import OUTPUT_MARKER, render_program
from compiler.errors import UserError
from compiler.lowering.plans import Program, client_layout

__all__ = ["Manifest", "emit", "write_client_input", "OUTPUT_MARKER"]


def _sha256(path: str | Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected(program: Program) -> dict[str, Any]:
    from compiler.cost import estimate

    report = estimate(program)
    total = report.total
    return {**total.as_dict(), "latency_lan_s": report.latency("lan"), "latency_wan_s": report.latency("wan"),
            "time_s": report.latency("lan"),
            "by_op": {op: c.as_dict() for op, c in report.by_op().items()}}


def run_script(manifest: Manifest) -> str:
    return (
        "#!/usr/bin/env bash\n"
        f"# Compile and run {manifest.name} under {manifest.protocol} in a built MP-SPDZ tree ($MP_SPDZ_HOME);\n"
        f"# party 1 (the client) prints the revealed {manifest.reveal}: lines '{manifest.output_marker} <image> ...'.\n"
        "set -euo pipefail\n"
        'HERE="$(cd "$(dirname "$0")" && pwd)"\n'
        'cd "${MP_SPDZ_HOME:?set MP_SPDZ_HOME to a built MP-SPDZ}"\n'
        f'cp "$HERE/{manifest.name}.mpc" Programs/Source/ && {manifest.compile_command} && '
        f'{manifest.run_command} -IF "$HERE/Player-Data/Input" -OF . && grep "^{manifest.output_marker} " '
        f"logs/{manifest.name}-1\n"
    )


def emit(program: Program, out_dir: str | Path, *, onnx_path: str | Path | None = None,
         client_images: np.ndarray | None = None, template_set: str | None = None,
         calibration: dict[str, Any] | None = None) -> Manifest:
    """Write the compiled program to ``out_dir`` (replaced as a whole, or left untouched on failure).

    ``calibration``: :meth:`compiler.calibrate.Calibration.as_dict`, recorded in the manifest (ranges, choices,
    and the input bound party 1 checks its images against)."""
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {str(out)!r} exists and is not a directory; choose another output directory")
    if out.is_dir() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        # the directory is replaced as a whole: never delete files that are not an earlier compiled program
        raise UserError(f"-o {str(out)!r} is a non-empty directory without a manifest.json (not a compiled "
                        f"program) and would be replaced; choose a new or empty output directory")
    graph, profile = program.graph, program.profile
    source = Path(onnx_path).name if onnx_path else "an IR graph"
    text, weights = render_program(program, source, template_set)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's private 0700 would become OUT's mode
    except OSError as exc:
        raise _unwritable(out, exc) from None
    try:
        (tmp / f"{program.name}.mpc").write_text(text)
        weight_hash = write_weights(tmp / input_file(0), (data for _, data in weights), profile.fx)
        input_value = graph.values[graph.inputs[0]]
        image_shape, index = client_layout(graph)
        layout = per_image_layout(index, program.batch, int(np.prod(image_shape[1:])))
        output_value = graph.values[graph.outputs[0]]
        per_image = int(np.prod(output_value.shape[1:], dtype=np.int64))
        manifest = Manifest(
            name=program.name, protocol=profile.protocol, mpspdz_protocol=profile.mpspdz_protocol,
            binary=profile.binary, script=profile.script, n_parties=profile.n_parties,
            compile_flags=profile.compile_flags, compile_command=profile.compile_command(program.name),
            run_command=profile.run_command(program.name), f=profile.f, k=profile.k, ring_bits=profile.ring_bits,
            truncation=profile.trunc, security=profile.spec.security.as_dict(), batch=program.batch, reveal=program.reveal, output_marker=OUTPUT_MARKER,
            input_name=input_value.name, input_shape=list(image_shape), client_shape=list(input_value.shape),
            client_layout=layout,
            output_shape=[program.batch, 1 if program.reveal == "argmax" else per_image],
            outputs=[{"name": name, "shape": list(graph.values[name].shape)} for name in graph.outputs],
            weights=[{"name": w.name, "shape": list(data.shape), "dtype": WEIGHT_DTYPE.name,
                      "transposed": data is not w.data} for w, data in weights],
            input_files={str(party): input_file(party) for party in (0, 1)},
            weight_sha256=weight_hash, model=str(graph.metadata.get("mpcvit.model", program.name)),
            # absolute: `mpcvit run` compares with this model from whatever directory it is started in
            onnx={"path": str(Path(onnx_path).resolve()) if onnx_path else None, "sha256": _sha256(onnx_path),
                  "metadata": dict(graph.metadata)},
            approximations={p.node.name: {role: f"{u.label} {u.kwargs}" if u.params else u.label
                                          for role, u in p.approx.items()}
                            for p in program.node_plans if p.approx},
            approx_justification=profile.justification, expected=_expected(program),
            op_counts=graph.op_counts(), model_config=parse_metadata(graph.metadata), template_set=template_set,
            warnings=list(program.warnings), calibration=calibration, batch_loop=True, directory=out)
        images = np.zeros(image_shape) if client_images is None else client_images
        write_client_input(manifest.as_dict(), images, tmp / input_file(1))
        (tmp / "manifest.json").write_text(manifest.to_json())
        script = tmp / "run.sh"
        script.write_text(run_script(manifest))
        script.chmod(0o755)
        _replace_dir(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _unwritable(out, exc) from None
        raise
    return manifest


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _unwritable(out: Path, exc: OSError) -> UserError:
    return UserError(f"-o {str(out)!r} cannot be written ({exc.strerror or type(exc).__name__}); choose a "
                     f"writable output directory")


def _replace_dir(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an existing ``out`` is swapped away first and deleted after."""
    if not out.exists():
        os.rename(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.rename(out, old / "previous")
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old / "previous", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
