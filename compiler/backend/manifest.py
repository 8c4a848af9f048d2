"""``manifest.json``: everything the runtime and a reader need to run and trust a compiled program."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compiler.errors import UserError

OUTPUT_MARKER = "MPCVIT_OUT"  # prefix of the lines party 1 prints (compiler.runtime.parser reads them)


def output_marker(index: int, marker: str = OUTPUT_MARKER) -> str:
    """Line prefix of graph output ``index``: ``MPCVIT_OUT`` for output 0 (unchanged), ``MPCVIT_OUT<j>`` after."""
    return marker if index == 0 else f"{marker}{index}"


@dataclass
class Manifest:
    name: str
    protocol: str
    mpspdz_protocol: str
    binary: str
    script: str
    n_parties: int
    compile_flags: list[str]
    compile_command: str
    run_command: str
    f: int
    k: int
    ring_bits: int
    truncation: str
    batch: int
    reveal: str
    output_marker: str
    input_name: str
    input_shape: list[int]  # the model input (image batch) the client passes
    client_shape: list[int]  # the tensor party 1 secret-shares (patch-wise)
    client_layout: list[int] | None  # per image: positions in the flattened image, in party 1's input order
    output_shape: list[int]  # output 0 as [B, values per image] ([B, 1] for --reveal argmax)
    weights: list[dict[str, Any]]  # name, shape, dtype in party 0's input file (float32/float64), in its order
    weight_sha256: str
    model: str
    onnx: dict[str, Any]  # path, sha256, metadata (the raw metadata_props strings)
    approximations: dict[str, dict[str, Any]]  # node -> {role: op:choice (params)}
    approx_justification: dict[str, Any]
    expected: dict[str, Any]  # cost estimate totals
    op_counts: dict[str, int]
    model_config: dict[str, Any]  # the ONNX metadata with JSON values decoded (config, head kinds, dataset…)
    template_set: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)  # every graph output: name, shape (batch first)
    warnings: list[str] = field(default_factory=list)
    # compiler.calibrate: samples, margin, input_range/input_bound (party 1's guard), tensor ranges, choices per site
    calibration: dict[str, Any] | None = None
    input_files: dict[str, str] = field(default_factory=dict)  # party -> its binary input file, relative to OUT
    security: dict[str, Any] | None = None  # the protocol's security model (profiles.SecurityModel.as_dict)
    # the program loops over batches: party 1's input starts with their number (compiler.backend.inputs.client_text)
    batch_loop: bool = False
    directory: Path = field(default=Path("."), repr=False, compare=False)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, default=str)

    @classmethod
    def load(cls, where: str | Path) -> "Manifest":
        path = Path(where)
        path = path / "manifest.json" if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
            return cls(**data, directory=path.parent)
        except FileNotFoundError:
            raise UserError(f"manifest {str(path)!r} not found; compile the model first (mpcvit-compile)") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise UserError(f"manifest {str(path)!r} is not an mpcvit manifest ({exc}); recompile the model") from None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("directory")
        return data


def parse_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """ONNX metadata_props with the JSON values decoded."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
    return out
