"""The pattern passes issue 8 adds, each on the zoo model that needs it: the pattern fires (IR op counts after
``run_passes``) and the float IR evaluation before and after the pass agree (``compiler.ir_eval``)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from compiler.frontend import load_onnx
from compiler.ir import Graph
from compiler.ir_eval import evaluate
from compiler.passes import PIPELINE, fold_channel_affine
from onnx_fixtures import run_onnxruntime, shared_dir
from test_passes import make_graph
from zoo_models import export_zoo, random_inputs

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = shared_dir(tmp_path_factory) / "zoo"
    path.mkdir(exist_ok=True)
    return path


def feeds_for(graph: Graph, image: np.ndarray) -> dict[str, np.ndarray]:
    return {graph.inputs[0]: image}


def pipeline_checking(graph: Graph, target: Callable[[Graph], Graph], image: np.ndarray) -> tuple[Graph, dict, dict]:
    """Run the whole pipeline; around ``target`` compare the float evaluation before and after it. Returns the
    final graph and the op counts before and after ``target``. Tolerance: both sides are float64 evaluations of
    the same arithmetic regrouped (weights multiplied out), so only rounding differs."""
    counts: list[dict[str, int]] = []
    for step in PIPELINE:
        if step is target:
            before = evaluate(copy.deepcopy(graph), feeds_for(graph, image))
            counts.append(graph.op_counts())
            graph = step(graph)
            counts.append(graph.op_counts())
            after = evaluate(graph, feeds_for(graph, image))
            for b, a in zip(before.values(), after.values()):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
        else:
            graph = step(graph)
    assert counts, f"{target.__name__} is not in the pipeline"
    return graph, counts[0], counts[1]


def test_layerscale_folds_into_the_linear_weights(zoo_dir: Path) -> None:
    path = export_zoo("vit_layerscale", "dynamo", zoo_dir)
    image = random_inputs(1)
    graph, before, after = pipeline_checking(load_onnx(path), fold_channel_affine, image)
    # two LayerScale muls per block (attention and MLP branches), two blocks; the GeLU's x * (...) muls remain
    assert before["mul"] - after["mul"] == 4
    assert "mul" not in graph.op_counts() and graph.op_counts()["linear"] == 10
    np.testing.assert_allclose(evaluate(graph, feeds_for(graph, image))[graph.outputs[0]],
                               run_onnxruntime(path, image), atol=1e-4)  # float32 onnxruntime vs float64


def test_channel_affine_before_and_after_a_linear_folds_and_elsewhere_stays() -> None:
    w, b = RNG.standard_normal((4, 3)), RNG.standard_normal(3)
    c3, c4 = RNG.standard_normal(3), RNG.standard_normal((1, 1, 4))
    graph = make_graph({"x": (2, 5, 4)}, {"w": ("param", w), "b": ("param", b), "c3": ("param", c3),
                                           "c4": ("param", c4), "s": ("param", np.array([0.5]))},
                       [("mul", ["x", "c4"], "xs", (2, 5, 4), {}),       # before the linear: rows of W
                        ("add", ["xs", "c4"], "xa", (2, 5, 4), {}),      # before: b + c @ W
                        ("linear", ["xa", "w", "b"], "y", (2, 5, 3), {}),
                        ("mul", ["c3", "y"], "ys", (2, 5, 3), {}),       # after: columns of W and b
                        ("add", ["ys", "c3"], "ya", (2, 5, 3), {}),      # after: b + c
                        ("mul", ["ya", "ya"], "sq", (2, 5, 3), {}),      # secret x secret: not a channel op
                        ("mul", ["sq", "s"], "z", (2, 5, 3), {})],       # no linear next to it: stays
                       "z")
    feeds = {"x": RNG.standard_normal((2, 5, 4))}
    before = evaluate(copy.deepcopy(graph), feeds)["z"]
    graph = fold_channel_affine(graph)
    np.testing.assert_allclose(evaluate(graph, feeds)["z"], before, rtol=1e-12, atol=1e-12)
    assert graph.op_counts() == {"input": 1, "linear": 1, "mul": 2, "output": 1}
