"""Backend: the emitted program, input files, manifest and atomic output (no MP-SPDZ needed)."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

import tiny_vit_ir
from compiler.backend import Manifest, emit, write_client_input
from compiler.backend.addressing import affine, broadcast_index, column_pattern, runs, strided_runs
from compiler.backend.inputs import CLIENT_CODE, input_file, read_client_input, write_weights
from compiler.errors import CompileError, UserError
from compiler.fixedpoint import FixedPoint
from compiler.ir import Value
from compiler.lowering import get_profile, lower
from compiler.lowering.plans import client_input


def mpspdz_reads(path, codes_and_sizes, f, count=None):
    """The integers MP-SPDZ's ``fixinput`` (Processor/Processor.hpp) makes of a binary input file: an int64 (code
    0: a binary sint input) as is, a native float64 (code 2: sfix) v as round(v·2^f); also checks nothing is left
    over. With ``count``, the file starts with that int64 (a looped program's batch count, read as a binary sint)."""
    raw, out, offset = path.read_bytes(), [], 0
    if count is not None:
        assert np.frombuffer(raw, dtype="<i8", count=1)[0] == count
        offset = 8
    for code, size in codes_and_sizes:
        dtype = np.dtype("<i8" if code == 0 else "<f8")
        values = np.frombuffer(raw, dtype=dtype, count=size, offset=offset)
        # C's round: only integral products here
        out.append(values.copy() if code == 0 else np.round(values * 2.0 ** f).astype(np.int64))
        offset += size * dtype.itemsize
    assert offset == len(raw)
    return out


def regint_inc(size, base=0, step=1, repeat=1, wrap=None):
    """numpy model of MP-SPDZ's regint.inc (Compiler/types.py)."""
    i = np.arange(size)
    return base + ((i // repeat) % (wrap or size)) * step


def evaluate(pattern, origin=0):
    """The address vector that Affine.expr renders, evaluated with the numpy model of regint.inc."""
    code = pattern.expr("origin")
    return eval(code.replace("regint.inc", "regint_inc"), {"regint_inc": regint_inc, "origin": origin})


@pytest.mark.parametrize("index", [
    np.arange(24).reshape(2, 3, 4).transpose(0, 2, 1),  # transpose
    broadcast_index((1, 5, 3), (4, 5, 3)),  # positional embedding over the batch
    broadcast_index((3,), (2, 4, 3)),  # bias
    broadcast_index((4, 1), (4, 6)),  # per-row value over its row
    np.arange(100).reshape(10, 10)[2:8:2, 1:9:3],  # strided slice
    np.full((3, 2), 7),  # one element everywhere
])
def test_affine_index_maps_render_to_the_same_addresses(index):
    pattern = affine(index)
    assert pattern is not None
    assert np.array_equal(evaluate(pattern, origin=1000), 1000 + index.reshape(-1))


def test_non_affine_maps_and_runs():
    assert affine(np.array([0, 1, 3])) is None
    concat = np.concatenate([np.arange(4), 4 + np.arange(8)[::-1]])
    assert affine(concat) is None
    cls_concat = np.concatenate([np.broadcast_to(np.arange(3), (2, 1, 3)), 3 + np.arange(12).reshape(2, 2, 3)], 1)
    got = [(r.source, r.src_start, r.out_start, r.length) for r in runs(cls_concat, [3, 12])]
    assert got == [(0, 0, 0, 3), (1, 0, 3, 6), (0, 0, 9, 3), (1, 6, 12, 6)]
    assert column_pattern([4, 6, 8]) == (4, 2) and column_pattern([1, 2, 4]) is None


def padded_im2col(channels: int = 2, size: int = 5, kernel: int = 3, stride: int = 2, pad: int = 1) -> np.ndarray:
    """The im2col index of a padded, strided convolution over a [1, C, H, W] image whose padding reads input 1
    (one zero constant at flat position C·H·W): [1, patches, C·k·k]."""
    image = np.arange(channels * size * size).reshape(channels, size, size)
    padded = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), constant_values=image.size)
    out = (size + 2 * pad - kernel) // stride + 1
    return np.stack([padded[:, i * stride:i * stride + kernel, j * stride:j * stride + kernel].reshape(-1)
                     for i in range(out) for j in range(out)])[None]


def _gathered(found, sizes: list[int], shape: tuple[int, ...]) -> np.ndarray:
    flat = np.full(int(np.prod(shape)), -1, dtype=np.int64)
    offsets = np.cumsum([0] + sizes)
    for r in found:
        for k in range(r.count):
            flat[r.out_start + k * r.out_jump + r.out_step * np.arange(r.length)] = \
                offsets[r.source] + r.src_start + k * r.src_jump + r.src_step * np.arange(r.length)
    return flat.reshape(shape)


def test_strided_runs_reproduce_any_index_map_with_fewer_pieces():
    rng = np.random.default_rng(3)
    for _ in range(200):  # any map, several inputs: the runs write every output position from the right source
        shape = tuple(int(d) for d in rng.integers(1, 5, rng.integers(1, 4)))
        sizes = [int(n) for n in rng.integers(1, 10, rng.integers(1, 3))]
        index = rng.integers(0, sum(sizes), shape)
        assert np.array_equal(_gathered(strided_runs(index, sizes), sizes, shape), index)
    index = padded_im2col()
    found = strided_runs(index, [50, 1])
    assert np.array_equal(_gathered(found, [50, 1], index.shape), index)
    # 18 (channel, kernel offset) columns of 9 patches, broken where a window meets the padding, the same pieces
    # of consecutive patch rows merged: 31 gathers where contiguous copies (at most 3 long) need 106
    assert len(found) * 3 <= len(runs(index, [50, 1]))
    wide = padded_im2col(channels=4, size=8, stride=1)  # 3x3, pad 1: 1,072 copies
    assert len(strided_runs(wide, [256, 1])) * 10 <= len(runs(wide, [256, 1]))


@pytest.fixture
def compiled(tmp_path):
    g = tiny_vit_ir.build(batch=2)
    prog = lower(g, get_profile("dealer"), name="tiny vit")
    images = np.random.default_rng(3).uniform(-1, 1, (2, 1, 8, 8))
    manifest = emit(prog, tmp_path / "out", client_images=images)
    return prog, manifest, images, tmp_path / "out"


def test_emit_writes_program_inputs_manifest_and_run_script(compiled):
    prog, manifest, images, out = compiled
    assert sorted(p.name for p in out.iterdir()) == ["Player-Data", "manifest.json", "run.sh", "tiny_vit.mpc"]
    weights = (out / input_file(0)).read_bytes()
    assert hashlib.sha256(weights).hexdigest() == manifest.weight_sha256
    # linear weights [in, out] are written [out, in] (compiler.backend.render.transposed_weights), the rest as is
    params = [prog.graph.values[w["name"]].data.T if w["transposed"] else prog.graph.values[w["name"]].data
              for w in manifest.weights]
    linear_weights = {p.node.inputs[1] for p in prog.node_plans if p.node.op == "linear"}
    assert {w["name"] for w in manifest.weights if w["transposed"]} == linear_weights
    assert all(list(param.shape) == w["shape"] for param, w in zip(params, manifest.weights))
    assert {w["dtype"] for w in manifest.weights} == {"int64"}
    assert len(weights) == 8 * sum(p.size for p in params)
    fx = prog.profile.fx
    decoded = mpspdz_reads(out / input_file(0), [(0, p.size) for p in params], fx.f)
    for got, param in zip(decoded, params):  # the reference executor's integers, bit for bit
        assert np.array_equal(got, fx.encode(param).reshape(-1))
    client = mpspdz_reads(out / input_file(1), [(CLIENT_CODE, images.size)], fx.f, count=1)[0]
    assert np.array_equal(client, fx.encode(client_input(prog.graph, images)).reshape(-1))
    data = json.loads((out / "manifest.json").read_text())
    assert data["protocol"] == "dealer" and data["mpspdz_protocol"] == "dealer-ring" and data["n_parties"] == 3
    assert data["compile_flags"][:2] == ["-E", "dealer-ring"] and data["batch"] == 2
    assert data["output_shape"] == [2, 10] and data["input_shape"] == [2, 1, 8, 8]
    assert data["approximations"]["attn"]["softmax.exp"].startswith("exp:")
    assert data["approx_justification"]["gelu"]["chosen"] == prog.profile.approx["gelu"]
    assert data["expected"]["bytes_all"] > 0 and data["expected"]["rounds"] > 0
    assert data["model_config"]["mpcvit.head_kinds"] == [list(tiny_vit_ir.KINDS)]
    script = (out / "run.sh").read_text()
    assert "./compile.py -E dealer-ring" in script and "Scripts/dealer-ring.sh tiny_vit -d -b 100000" in script
    assert Manifest.load(out).weight_sha256 == manifest.weight_sha256


def test_program_is_vectorised_and_reveals_only_to_the_client(compiled):
    prog, manifest, _, out = compiled
    text = (out / "tiny_vit.mpc").read_text()
    compile(text, "tiny_vit.mpc", "exec")  # valid Python, as MP-SPDZ's compiler needs
    assert re.findall(r"\.input_from\((\d), binary=(\d)\)", text).count(("1", "2")) == 1
    # every weight tensor read by mpcvit_weight at its position in the shares file (--weights shared)
    calls = re.findall(r"= mpcvit_weight\((\d+), (\d+), (\d+)\)", text)
    sizes = [int(rows) * int(cols) for rows, cols, _ in calls]
    assert sizes == [int(np.prod(w["shape"])) for w in manifest.weights]
    assert [int(position) for *_, position in calls] == np.cumsum([0] + sizes[:-1]).tolist()
    # nothing revealed to everyone but the number of batches party 1 sends (public: every party loops that often)
    assert text.count("reveal()") == 1 and "regint(sint.get_input_from(1, binary=True).reveal())" in text
    assert "print_ln(" not in text
    assert "print_ln_to(1, 'MPCVIT_OUT %s %s'" in text
    for use in prog.approx_uses():  # each approximation defined once
        assert text.count(f"def {use.fn_name}(") == 1
    big = lower(tiny_vit_ir.build(batch=2, image=32, dim=32), get_profile("dealer"), name="big")
    big_text = emit(big, out.parent / "big").directory.joinpath("big.mpc").read_text()
    # the program text does not grow with tokens or dims (only the layout copies of the batch are unrolled)
    assert abs(len(big_text.splitlines()) - len(text.splitlines())) <= 2


def test_write_client_input_lays_images_out_like_the_reference(compiled, tmp_path):
    prog, manifest, _, out = compiled
    images = np.random.default_rng(5).uniform(-2, 2, (2, 1, 8, 8))
    from_dict = write_client_input(json.loads((out / "manifest.json").read_text()), images, tmp_path / "a")
    from_dir = write_client_input(out, images)
    assert from_dir == out / input_file(1) and from_dict.read_bytes() == from_dir.read_bytes()
    values = mpspdz_reads(from_dir, [(CLIENT_CODE, images.size)], prog.profile.f, count=1)[0]
    assert np.array_equal(values, prog.profile.fx.encode(client_input(prog.graph, images)).reshape(-1))
    with pytest.raises(UserError, match=r"compiled for \(2, 1, 8, 8\)"):
        write_client_input(out, images[:1, :, :4])
    # three batches in one file, read back as the images party 1 input (fixed point: within half an ulp, 2^-17)
    more = np.random.default_rng(6).uniform(-2, 2, (6, 1, 8, 8))
    path = write_client_input(out, more, tmp_path / "Input-Binary-P1-0")
    assert np.frombuffer(path.read_bytes(), dtype="<i8", count=1)[0] == 3
    np.testing.assert_allclose(read_client_input(manifest.as_dict(), path), more, rtol=0, atol=2 ** -17)
    with pytest.raises(UserError, match=r"compiled for \(2, 1, 8, 8\)"):  # not whole batches
        write_client_input(out, more[:5])


def test_argmax_reveal(tmp_path):
    prog = lower(tiny_vit_ir.build(batch=3), get_profile("semi2k"), name="am", reveal="argmax")
    manifest = emit(prog, tmp_path / "am")
    text = (tmp_path / "am" / "am.mpc").read_text()
    assert "mpcvit_argmax_rows(" in text and manifest.output_shape == [3, 1]


def test_failed_emit_leaves_nothing_and_keeps_the_previous_output(compiled, tmp_path):
    prog, manifest, _, out = compiled
    before = (out / "manifest.json").read_text()
    broken = lower(tiny_vit_ir.build(batch=2), get_profile("dealer"), name="tiny vit")
    broken.graph.add_value(Value("w_qkv", (16, 48), "param", None))  # a weight without a value
    with pytest.raises(CompileError, match="weight 'w_qkv' has no value"):
        emit(broken, out)
    with pytest.raises(UserError, match="template set 'nope' not found"):
        emit(prog, tmp_path / "fresh", template_set="nope")
    assert (out / "manifest.json").read_text() == before
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left beside it
    emit(lower(tiny_vit_ir.build(batch=1), get_profile("semi2k"), name="tiny vit"), out)  # replaced as a whole
    assert json.loads((out / "manifest.json").read_text())["protocol"] == "semi2k"


def test_emit_never_replaces_a_foreign_directory_and_reports_unwritable_paths(tmp_path):
    prog = lower(tiny_vit_ir.build(batch=1), get_profile("semi2k"), name="tiny")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"mine' is a non-empty directory without a manifest\.json"):
        emit(prog, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"a_file/out' cannot be written \(File exists\)"):
        emit(prog, tmp_path / "a_file" / "out")
    with pytest.raises(UserError, match="template set 'nope' not found"):
        emit(prog, tmp_path / "new" / "deeper", template_set="nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "mine"]  # no parent created on failure
    (tmp_path / "empty").mkdir()
    emit(prog, tmp_path / "empty")
    assert (tmp_path / "empty" / "manifest.json").is_file()
    assert (tmp_path / "empty").stat().st_mode & 0o777 == (tmp_path / "mine").stat().st_mode & 0o777  # not 0700


def test_template_set_overrides_node_templates(tmp_path, monkeypatch):
    import compiler.backend.render as render

    root = tmp_path / "templates"
    (root / "alt" / "nodes").mkdir(parents=True)
    for path in render.TEMPLATE_ROOT.rglob("*.j2"):
        target = root / path.relative_to(render.TEMPLATE_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (root / "alt" / "nodes" / "gelu.mpc.j2").write_text("{{ out.var }} = ml_gelu({{ x.var }})  # alt\n")
    monkeypatch.setattr(render, "TEMPLATE_ROOT", root)
    prog = lower(tiny_vit_ir.build(batch=1), get_profile("semi2k"), name="alt")
    text = emit(prog, tmp_path / "o", template_set="alt").directory.joinpath("alt.mpc").read_text()
    assert "= ml_gelu(t" in text and "# attn: attention" in text


@pytest.mark.parametrize("f", range(1, 31))
def test_binary_inputs_decode_to_the_reference_integers_at_every_precision(f: int, tmp_path) -> None:
    """What MP-SPDZ reads must be exactly the reference's round-to-nearest integers q: the weights as int64 q, the
    client's image as float64 q/2^f, which MP-SPDZ turns back into round(v·2^f)."""
    fx = FixedPoint(f, 31 if f < 30 else 40)
    rng = np.random.default_rng(f)
    values = np.concatenate([rng.uniform(-1, 1, 500) * 2.0 ** (30 - f), [0.0, 2.0 ** (30 - f), -(2.0 ** -f) / 2,
                                                                      3 * 2.0 ** (-f - 1)]])
    # halfway values: q of -2^-f/2 is 0 and of 1.5·2^-f is 2 (half to even), as FixedPoint.encode rounds
    path = tmp_path / "in"
    write_weights(path, [values, values[::-1]], fx)
    assert path.stat().st_size == 8 * 2 * values.size
    got = mpspdz_reads(path, [(0, values.size), (0, values.size)], f)
    assert np.array_equal(got[0], fx.encode(values)) and np.array_equal(got[1], fx.encode(values[::-1]))


def test_ml_baseline_template_set_renders_every_node(tmp_path):
    """The shipped naive baseline (``--template-set ml_baseline``) renders a whole ViT to valid Python, its
    LayerNorm unscaled: the plain 1/C and the model's ε (not the σ²-scaled one of the default template)."""
    graph = tiny_vit_ir.build(batch=1)
    prog = lower(graph, get_profile("replicated-ring"), name="mlb")
    text = emit(prog, tmp_path / "o", template_set="ml_baseline").directory.joinpath("mlb.mpc").read_text()
    compile(text, "mlb.mpc", "exec")  # syntax only: MP-SPDZ's compiler runs it as Python
    dim = graph.values[graph.nodes[[n.op for n in graph.nodes].index("layernorm")].inputs[0]].shape[-1]
    assert "NAIVE MP-SPDZ BASELINE layernorm" in text and f"* {1.0 / dim!r}" in text
    assert "mpc_math.InvertSqrt(ln_var[:] + 1e-05)" in text
