"""Outputs of any shape and number: manifest entries, party 1's lines and the runtime parser's per-output arrays."""
from __future__ import annotations

import json

import pytest

import tiny_vit_ir
from compiler.backend import emit
from compiler.errors import MPSPDZError
from compiler.lowering import get_profile, lower
from compiler.runtime.parser import revealed_outputs
from compiler.runtime.runner import output_shapes
from general_ops_ir import one_op

S = "secret"


def test_manifest_lists_every_output_and_keeps_output_shape_of_output_zero(tmp_path):
    g = one_op("softmax", [(S, (2, 3, 4))], {"axis": -1}, extra_outputs=1)
    manifest = emit(lower(g, get_profile("dealer"), name="multi"), tmp_path / "out")
    data = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert data["outputs"] == [{"name": "y", "shape": [2, 3, 4]}, {"name": "extra0", "shape": [2, 3, 4]}]
    assert data["output_shape"] == [2, 12] == manifest.output_shape  # output 0 as [B, values per image]
    assert output_shapes(data) == [(2, 12), (2, 3, 4)]


def test_classifier_manifest_is_unchanged_for_existing_runs(tmp_path):
    data = emit(lower(tiny_vit_ir.build(), get_profile("semi2k")), tmp_path / "vit").as_dict()
    assert data["output_shape"] == [2, 10] and data["outputs"] == [{"name": "logits", "shape": [2, 10]}]
    legacy = {k: v for k, v in data.items() if k != "outputs"}  # a manifest written before outputs existed
    assert output_shapes(legacy) == [(2, 10)]
    argmax = emit(lower(tiny_vit_ir.build(), get_profile("semi2k"), reveal="argmax"), tmp_path / "am").as_dict()
    assert output_shapes(argmax) == [(2, 1)]


def test_parser_returns_each_output_in_its_shape():
    text = "\n".join(["MPCVIT_OUT 0 [1, 2, 3, 4]", "MPCVIT_OUT1 0 [5, 6]", "MPCVIT_OUT 1 [7, 8, 9, 10]",
                      "MPCVIT_OUT1 1 [11, 12]", "other output"])
    first, second = revealed_outputs(text, [(2, 4), (2, 1, 2)])
    assert first.tolist() == [[1, 2, 3, 4], [7, 8, 9, 10]]
    assert second.tolist() == [[[5, 6]], [[11, 12]]]
    with pytest.raises(MPSPDZError, match="no 'MPCVIT_OUT2 0 ...' output line"):
        revealed_outputs(text, [(2, 4), (2, 2), (2, 1)])


def test_argmax_reveal_of_a_model_with_several_outputs_is_refused():
    """Only output 0 would be reduced to its class: the others would be revealed whole, against --reveal's word."""
    from compiler.errors import CompileError

    g = one_op("softmax", [(S, (2, 4))], {"axis": -1}, extra_outputs=1)
    with pytest.raises(CompileError, match=r"--reveal argmax reveals one \[batch, classes\] output, but the model "
                                           r"has 2 \(y, extra0\): use --reveal logits"):
        lower(g, get_profile("dealer"), reveal="argmax")
