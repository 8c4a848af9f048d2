"""Render a lowered program into one MP-SPDZ ``.mpc`` source: a skeleton plus one template per node kind.

Templates live in ``spdz_templates/`` (``program.mpc.j2``, ``helpers.mpc.j2``, ``nodes/<op>.mpc.j2``). A template
set (``emit(..., template_set="ml_baseline")``) is a directory ``spdz_templates/<set>/`` whose files override the
default ones of the same relative path (e.g. ``ml_baseline/nodes/attention.mpc.j2``), through a jinja2
ChoiceLoader; overrides receive the same context.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from compiler.approx import REGISTRY
from compiler.backend.addressing import affine, broadcast_index, column_pattern, runs
from compiler.errors import CompileError, UserError
from compiler.ir import Node, Value
from compiler.lowering.plans import NodePlan, Program, attention_groups, relu_softmax_eps
from compiler.reference.executor import layernorm_eps_int

TEMPLATE_ROOT = Path(__file__).resolve().parents[2] / "spdz_templates"
OUTPUT_MARKER = "MPCVIT_OUT"  # the line prefix compiler.runtime.parser reads
MAX_COPY_RUNS = 4096  # a layout of more contiguous runs than this must be affine (one gather)


@dataclass(frozen=True)
class Tensor:
    """A tensor of the emitted program: an sfix Matrix [rows, cols] (rows = all leading dims)."""

    var: str
    name: str
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return int(self.shape[-1]) if self.shape else 1

    @property
    def size(self) -> int:
        return self.rows * self.cols


def template_env(template_set: str | None = None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if template_set:
        override = TEMPLATE_ROOT / template_set
        if not override.is_dir():
            sets = sorted(p.name for p in TEMPLATE_ROOT.iterdir() if p.is_dir() and p.name not in ("nodes", "approx")
                          and not p.name.startswith("_"))
            raise UserError(f"template set {template_set!r} not found under {TEMPLATE_ROOT}; available: "
                            f"{', '.join(sets) or 'none'}")
        loaders.append(jinja2.FileSystemLoader(str(override)))
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATE_ROOT)))
    return jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


class _Renderer:
    def __init__(self, program: Program, env: jinja2.Environment) -> None:
        self.program = program
        self.graph = program.graph
        self.env = env
        self.tensors: dict[str, Tensor] = {}
        self.weights: list[Value] = []
        for p in program.node_plans:
            for name in p.node.inputs:
                value = self.graph.values[name]
                if value.role in ("param", "public") and name not in self.tensors:
                    if value.data is None:
                        raise CompileError(f"weight {name!r} has no value; the ONNX initializer is missing")
                    self.weights.append(value)
                    self.tensor(name)

    def tensor(self, name: str) -> Tensor:
        if name not in self.tensors:
            value = self.graph.values[name]
            prefix = "w" if value.role != "secret" else "t"
            self.tensors[name] = Tensor(f"{prefix}{len(self.tensors)}", name, value.shape or (1,))
        return self.tensors[name]

    def vector(self, name: str, out_shape: tuple[int, ...]) -> str:
        """Expression of tensor ``name`` as a vector broadcast to ``out_shape``."""
        t = self.tensor(name)
        if tuple(t.shape) == tuple(out_shape):
            return f"{t.var}.get_vector()"
        pattern = affine(broadcast_index(self.graph.values[name].shape, out_shape))
        assert pattern is not None  # a numpy broadcast is always affine
        return f"sfix.load_mem({pattern.expr(t.var + '.address')})"

    def block(self, p: NodePlan) -> str | None:
        node = p.node
        if node.op == "input":
            return None
        ctx: dict[str, Any] = {"node": node, "op": node.op, "marker": OUTPUT_MARKER, "reveal": self.program.reveal,
                               "batch": self.program.batch}
        if node.outputs:
            ctx["out"] = self.tensor(node.outputs[0])
        getattr(self, f"ctx_{node.op}")(node, p, ctx)
        return self.env.get_template(f"nodes/{node.op}.mpc.j2").render(**ctx)

    # --- per-kind contexts ---------------------------------------------------------------------------------
    def ctx_linear(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        ctx.update(x=self.tensor(node.inputs[0]), w=self.tensor(node.inputs[1]), bias=None)
        if len(node.inputs) > 2:
            out_shape = (ctx["out"].rows, ctx["out"].cols)
            index = broadcast_index(self.graph.values[node.inputs[2]].shape, out_shape)
            pattern = affine(index)
            assert pattern is not None
            ctx["bias"] = pattern.expr(self.tensor(node.inputs[2]).var + ".address")

    def ctx_add(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        shape = self.graph.values[node.outputs[0]].shape
        ctx.update(a=self.tensor(node.inputs[0]), b=self.tensor(node.inputs[1]),
                   a_vec=self.vector(node.inputs[0], shape), b_vec=self.vector(node.inputs[1], shape))

    ctx_sub = ctx_add

    def ctx_scale(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        ctx.update(x=self.tensor(node.inputs[0]), factor=repr(float(node.attrs["factor"])))

    def ctx_relu(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        ctx["x"] = self.tensor(node.inputs[0])

    def ctx_gelu(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        ctx.update(x=self.tensor(node.inputs[0]), fn=p.approx["gelu"].fn_name)

    def ctx_layout(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        inputs = [self.tensor(n) for n in node.inputs]
        index = np.asarray(node.attrs["index"], dtype=np.int64)
        copies = runs(index, [t.size for t in inputs])
        ctx.update(inputs=inputs, runs=copies, gather=None, how=f"{len(copies)} contiguous copies")
        if len(copies) > 8 and len(inputs) == 1:
            pattern = affine(index)
            if pattern is not None:
                ctx.update(gather=pattern.expr(inputs[0].var + ".address"), how="one affine gather")
                return
        if len(copies) > MAX_COPY_RUNS:
            raise CompileError(f"layout node {node.name!r}: the index map is neither affine nor made of at most "
                               f"{MAX_COPY_RUNS} contiguous runs ({len(copies)}); it cannot be emitted efficiently")

    def ctx_layernorm(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        x = self.tensor(node.inputs[0])
        fx = self.program.profile.fx
        tiled = (x.rows, x.cols)
        gamma, beta = (affine(broadcast_index(self.graph.values[n].shape, tiled)) for n in node.inputs[1:3])
        assert gamma is not None and beta is not None
        ctx.update(x=x, rows=x.rows, cols=x.cols, inv_cols=repr(1.0 / x.cols), rsqrt=p.approx["rsqrt"].fn_name,
                   eps=repr(layernorm_eps_int(node, fx) / fx.scale),
                   gamma=gamma.expr(self.tensor(node.inputs[1]).var + ".address"),
                   beta=beta.expr(self.tensor(node.inputs[2]).var + ".address"))

    def ctx_attention(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        q, k, v = (self.tensor(n) for n in node.inputs[:3])
        heads = node.attrs["heads"]
        batch, tokens = self.graph.values[node.inputs[0]].shape[:2]
        d = int(node.attrs["head_dim"])
        d_key = len(heads[0]["q_cols"])  # q/k width per head: d, or less (LeViT's key_dim)
        qk_cols, v_cols, groups = [], [], []
        fx = self.program.profile.fx
        for kind, members in attention_groups(node).items():
            group: dict[str, Any] = {"kind": kind, "heads": members, "rows": len(members) * batch * tokens,
                                     "offset": len(qk_cols) * batch * tokens * tokens}
            for h in members:
                cols = [column_pattern(heads[h][key]) for key in ("q_cols", "k_cols", "v_cols")]
                if any(c is None or len(heads[h][key]) != width
                       for c, key, width in zip(cols, ("q_cols", "k_cols", "v_cols"), (d_key, d_key, d))):
                    raise CompileError(f"attention node {node.name!r}: head {h} selects q/k/v columns that are not an "
                                       f"arithmetic progression of {d_key}/{d_key}/{d} columns")
                qk_cols.append((*cols[0], *cols[1]))
                v_cols.append((h, *cols[2]))
            if kind == "softmax":
                group.update(rowmax=p.approx["softmax.rowmax"].fn_name, exp=p.approx["softmax.exp"].fn_name,
                             reciprocal=p.approx["softmax.reciprocal"].fn_name)
            elif kind == "relu_softmax":
                group.update(reciprocal=p.approx["relu_softmax.reciprocal"].fn_name,
                             eps=repr(relu_softmax_eps(node, self.program.profile)[0] / fx.scale))
            groups.append(group)
        bias = None
        if len(node.inputs) > 3:  # [b, H, N, N]: the N x N block of each (head slot, image), in score order
            b_bias = self.graph.values[node.inputs[3]].shape[0]
            slots = [h for members in attention_groups(node).values() for h in members]
            bias = {"var": self.tensor(node.inputs[3]).var, "size": tokens * tokens,
                    "offsets": [((b % b_bias) * len(heads) + h) * tokens * tokens
                                for h in slots for b in range(batch)]}
        ctx.update(q=q, k=k, v=v, heads=heads, tokens=tokens, d=d, d_key=d_key, scores=f"s{len(self.tensors)}",
                   bias=bias, scale=float(node.attrs.get("scale", 1.0)), qk_cols=qk_cols, v_cols=v_cols, groups=groups,
                   kinds=", ".join(f"{len(g['heads'])} {g['kind']}" for g in groups))

    def ctx_output(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        x = self.tensor(node.inputs[0])
        if len(x.shape) != 2:
            raise CompileError(f"output {node.inputs[0]!r} has shape {x.shape}; expected logits [batch, classes]")
        ctx.update(x=x, result=f"r{len(self.tensors)}")

    # --- program --------------------------------------------------------------------------------------------
    def render(self, source: str) -> str:
        blocks = [b for b in (self.block(p) for p in self.program.node_plans) if b]
        fx = self.program.profile.fx
        approx_sources = [REGISTRY[use.op][use.choice].render(use.fn_name, fx, **use.kwargs)
                          for use in self.program.approx_uses()]
        weights = [self.tensors[w.name] for w in self.weights]
        return self.env.get_template("program.mpc.j2").render(
            name=self.program.name, source=source, profile=self.program.profile, reveal=self.program.reveal,
            marker=OUTPUT_MARKER, approx_sources=approx_sources, blocks=blocks,
            weights=weights, client=self.tensor(self.graph.inputs[0]))


def render_program(program: Program, source: str = "", template_set: str | None = None) -> tuple[str, list[Value]]:
    """(the .mpc source, the weights in Input-P0-0 order)."""
    renderer = _Renderer(program, template_env(template_set))
    return renderer.render(source), renderer.weights
