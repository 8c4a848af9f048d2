"""Compiling a model whose weights dominate its memory (issue 11, big models): a bounded number of weight copies."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnx

from compiler.api import compile_onnx
from compiler.backend.inputs import input_file
from onnx_fixtures import timm_vit

# Peak traced memory of a compile per weight. What it needs: the IR's float64 weights (8 B), the reference
# executor's int64 copy of them for its check run (8 B), and one layer's temporaries (the largest weight's float64
# limbs, the float32 array read from the file while it becomes float64). Measured: 24.3 B. Any extra full copy of
# the weights (8 B each) or a text input file (23 B a weight) breaks the bound: with text inputs, the compiler of
# before issue 11 peaked at 121 B.
BYTES_PER_WEIGHT = 32


def test_compile_memory_is_bounded_by_a_few_copies_of_the_weights(tmp_path: Path) -> None:
    # 3.2 M weights, 65 tokens: the weights outweigh every activation, as in ViT-B/16 (86 M weights, 197 tokens)
    inline = timm_vit(tmp_path, dynamo=False, img_size=32, embed_dim=256, depth=4, num_heads=4)
    path = tmp_path / "external.onnx"
    onnx.save(onnx.load(str(inline)), str(path), save_as_external_data=True, location="external.onnx.data",
              size_threshold=1024)
    weights = sum(int(np.prod(t.dims)) for t in onnx.load(str(path), load_external_data=False).graph.initializer)
    tracemalloc.start()
    try:
        result = compile_onnx(path, tmp_path / "out", calibration_samples=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= BYTES_PER_WEIGHT * weights, f"{peak / weights:.1f} bytes per weight"
    # the weights file: 8 bytes a weight (int64 fixed-point integers), nothing else
    assert (result.manifest.directory / input_file(0)).stat().st_size == 8 * sum(
        int(np.prod(w["shape"])) for w in result.manifest.weights)


def test_big_models_calibrate_in_float32_with_the_ranges_of_float64(monkeypatch) -> None:
    """Above FLOAT32_FROM weights, calibration evaluates in float32 (ViT-B/16 compiles in about half the time);
    forced here on a small ViT, every range and statistic stays within 1e-4 relative of float64's (float32 keeps
    ~7 digits; the deepest values sum a few hundred products), far inside the 4x margin the ranges get."""
    import tiny_vit_ir
    from compiler import calibrate as calibration

    graph = tiny_vit_ir.build(batch=1)
    images = np.random.default_rng(0).standard_normal((4, 1, 8, 8))  # the digits-sized image build() takes
    wide = calibration.calibrate(graph, images)
    monkeypatch.setattr(calibration, "FLOAT32_FROM", 0)
    narrow = calibration.calibrate(graph, images)
    assert wide.ranges.keys() == narrow.ranges.keys() and wide.sites.keys() == narrow.sites.keys()
    for name, (lo, hi) in wide.ranges.items():
        np.testing.assert_allclose(narrow.ranges[name], (lo, hi), rtol=1e-4, atol=1e-6, err_msg=name)
    for site, stats in wide.sites.items():
        for key, value in stats.items():
            np.testing.assert_allclose(narrow.sites[site][key], value, rtol=1e-4, atol=1e-6, err_msg=f"{site} {key}")
