"""ONNX export: one opset-18 file, metadata, onnxruntime agreement for every kind and mixed heads, plain graph."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compiler.errors import UserError
from mpcvit.export import export_onnx, read_metadata
from mpcvit.models import MPCViT, model_config

MIXED = dict(depth=4, head_kinds=[["softmax"] * 4, ["relu_softmax"] * 4, ["scaling"] * 4,
                                  ["relu_softmax", "scaling", "relu_softmax", "softmax"]],
             mlp_kinds=["gelu", "relu", "linear", "gelu"])
DATASET = {"name": "digits", "mean": [0.3], "std": [0.4]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = MPCViT(model_config("vit_1_4_8", **MIXED)).eval()
    out = tmp_path_factory.mktemp("export")
    return model, export_onnx(model, out / "mixed.onnx", DATASET)


def test_export_matches_onnxruntime_for_every_kind(exported) -> None:
    model, result = exported
    assert result.max_abs_error <= 1e-4
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    # the batch axis stays symbolic, so the compiler's --batch chooses it
    assert isinstance(session.get_inputs()[0].shape[0], str)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2
    with torch.no_grad():
        expected = model(x).numpy()
    # onnxruntime and torch both run float32 but fuse and order reductions differently: logits of order 1 after
    # several layers differ by ~1e-6; 1e-4 leaves margin while an export bug (a wrong op) is off by far more
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, atol=1e-4, rtol=0)


def test_one_file_opset_18_with_metadata(exported) -> None:
    model, result = exported
    assert [p.name for p in result.path.parent.iterdir()] == ["mixed.onnx"]  # no external data
    proto = onnx.load(str(result.path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    meta = read_metadata(result.path)
    assert json.loads(meta["mpcvit.head_kinds"]) == MIXED["head_kinds"]
    assert json.loads(meta["mpcvit.mlp_kinds"]) == MIXED["mlp_kinds"]
    assert json.loads(meta["mpcvit.config"]) == model.cfg.to_dict()
    assert meta["mpcvit.dataset"] == "digits" and json.loads(meta["mpcvit.input_std"]) == [0.4]


def test_graph_keeps_each_kind_recognisable(exported) -> None:
    _, result = exported
    ops = Counter(n.op_type for n in onnx.load(str(result.path)).graph.node)
    assert ops["Softmax"] == 2  # layer 0 and the softmax head of layer 3
    assert ops["ReduceSum"] == 2 and ops["Erf"] == 2 and ops["LayerNormalization"] == 9
    assert ops["Gather"] == 5  # interleaved layer: q/k/v index_select + head reorder, plus the class token


def test_compiler_recovers_head_kinds_from_the_graph(exported) -> None:
    passes = pytest.importorskip("compiler.passes")
    from compiler.frontend import load_onnx

    _, result = exported
    graph = passes.run_passes(load_onnx(result.path))
    kinds = [[h["kind"] for h in n.attrs["heads"]] for n in graph.nodes if n.op == "attention"]
    assert kinds == MIXED["head_kinds"]


def test_contiguous_groups_export_without_gather(tmp_path) -> None:
    torch.manual_seed(1)
    kinds = [["softmax", "relu_softmax", "relu_softmax", "scaling"]]
    model = MPCViT(model_config("vit_1_4_8", head_kinds=kinds))
    result = export_onnx(model, tmp_path / "contiguous.onnx", DATASET, check_images=2)
    assert result.max_abs_error <= 1e-4
    ops = Counter(n.op_type for n in onnx.load(str(result.path)).graph.node)
    assert ops["Gather"] == 1 and ops["Softmax"] == 1  # only the class token is gathered


def test_search_model_is_not_exportable(tmp_path) -> None:
    with pytest.raises(UserError, match="cannot export a search model"):
        export_onnx(MPCViT(model_config("vit_1_4_8", search=True)), tmp_path / "s.onnx", DATASET)
