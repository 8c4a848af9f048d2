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
from compiler.approx.rsqrt import RING_TOP
from compiler.backend.addressing import affine, broadcast_index, column_pattern, runs, strided_runs
from compiler.backend.inputs import CLIENT_CODE
from compiler.backend.manifest import OUTPUT_MARKER, output_marker
from compiler.errors import CompileError, UserError
from compiler.ir import Node, Value
from compiler.lowering.plans import (HARDSWISH, NodePlan, Program, attention_groups, constant_operands,
                                     matmul_instances, output_index, public_scalar, reduction_block, scaling_linear)

TEMPLATE_ROOT = Path(__file__).resolve().parents[2] / "spdz_templates"
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
        self.transposed = transposed_weights(program)
        for p in program.node_plans:
            constants = constant_operands(p.node, self.graph)
            for name in p.node.inputs:
                value = self.graph.values[name]
                if value.role in ("param", "public") and name not in self.tensors and name not in constants:
                    if value.data is None:
                        raise CompileError(f"weight {name!r} has no value; the ONNX initializer is missing")
                    self.weights.append(value)
                    self.tensor(name)

    def tensor(self, name: str) -> Tensor:
        if name not in self.tensors:
            value = self.graph.values[name]
            prefix = "w" if value.role != "secret" else "t"
            shape = value.shape[::-1] if name in self.transposed else value.shape
            self.tensors[name] = Tensor(f"{prefix}{len(self.tensors)}", name, shape or (1,))
        return self.tensors[name]

    def vector(self, name: str, out_shape: tuple[int, ...]) -> str:
        """Expression of tensor ``name`` as a vector broadcast to ``out_shape``."""
        t = self.tensor(name)
        if tuple(t.shape) == tuple(out_shape):
            return f"{t.var}.get_vector()"
        pattern = affine(broadcast_index(self.graph.values[name].shape, out_shape))
        assert pattern is not None  # a numpy broadcast is always affine
        return f"sfix.load_mem({pattern.expr(t.var + '.address')})"

    def permuted(self, name: str, perm: tuple[int, ...]) -> str:
        """Expression of tensor ``name`` with its axes reordered by ``perm``, as one vector (one local gather)."""
        t = self.tensor(name)
        if tuple(perm) == tuple(range(len(perm))):
            return f"{t.var}.get_vector()"
        return f"sfix.load_mem({self.permutation(name, perm).expr(t.var + '.address')})"

    def permutation(self, name: str, perm: tuple[int, ...]) -> Any:
        """The affine address pattern of tensor ``name`` transposed by ``perm`` (a transpose is always affine)."""
        shape = self.graph.values[name].shape
        pattern = affine(np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape).transpose(perm))
        assert pattern is not None
        return pattern

    def block(self, p: NodePlan) -> str | None:
        node = p.node
        if node.op == "input":
            return None
        ctx: dict[str, Any] = {"node": node, "op": node.op, "marker": OUTPUT_MARKER, "reveal": self.program.reveal,
                               "batch": self.program.batch,
                               "cmp_bits": p.params.get("bits", self.program.profile.k)}  # plans.comparison_bits
        if node.outputs:
            ctx["out"] = self.tensor(node.outputs[0])
        getattr(self, f"ctx_{node.op}")(node, p, ctx)
        return self.env.get_template(f"nodes/{node.op}.mpc.j2").render(**ctx)

    # --- per-kind contexts ---------------------------------------------------------------------------------
    def ctx_linear(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        ctx.update(x=self.tensor(node.inputs[0]), w=self.tensor(node.inputs[1]), bias=None,
                   w_transposed=node.inputs[1] in self.transposed, raw_input=p.params.get("raw_input"),
                   f=self.program.profile.fx.f)
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
        sizes = [t.size for t in inputs]
        copies = runs(index, sizes)
        ctx.update(inputs=inputs, runs=copies, strided=None, gather=None, how=f"{len(copies)} contiguous copies")
        if len(copies) <= 8:
            return
        pattern = affine(index) if len(inputs) == 1 else None
        if pattern is not None:
            ctx.update(runs=[], gather=pattern.expr(inputs[0].var + ".address"), how="one affine gather")
            return
        strided = strided_runs(index, sizes)
        if len(strided) < len(copies):
            ctx.update(runs=[], strided=strided, how=f"{len(strided)} strided gathers")
        if min(len(strided), len(copies)) > MAX_COPY_RUNS:
            raise CompileError(f"layout node {node.name!r}: the index map is neither affine nor made of at most "
                               f"{MAX_COPY_RUNS} strided runs along any axis ({len(strided)}); it cannot be emitted "
                               f"efficiently")

    def ctx_layernorm(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        x = self.tensor(node.inputs[0])
        fx = self.program.profile.fx
        tiled = (x.rows, x.cols)
        gamma, beta = (affine(broadcast_index(self.graph.values[n].shape, tiled)) for n in node.inputs[1:3])
        assert gamma is not None and beta is not None
        scale = p.params["scale"]
        # inv_cols, model_eps: ml_baseline's naive LayerNorm, unscaled (σ = 1)
        ctx.update(x=x, rows=x.rows, cols=x.cols, inv_cols=repr(1.0 / x.cols),
                   model_eps=repr(float(node.attrs.get("eps", 1e-5))), rsqrt=p.approx["rsqrt"].fn_name, f=fx.f, k=fx.k, scale=scale, eps=repr(scale.eps_int / fx.scale),
                   ring_top=RING_TOP + 1, affine=p.params.get("affine", True),
                   raw_output=p.params.get("raw_output", False),
                   diagonal_scaling=p.params.get("diagonal_scaling", False),
                   gamma=gamma.expr(self.tensor(node.inputs[1]).var + ".address"),
                   beta=beta.expr(self.tensor(node.inputs[2]).var + ".address"))

    def ctx_attention(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        q, k, v = (self.tensor(n) for n in node.inputs[:3])
        heads = node.attrs["heads"]
        batch, tokens = self.graph.values[node.inputs[0]].shape[:2]
        d = int(node.attrs["head_dim"])
        d_key = len(heads[0]["q_cols"])  # q/k width per head: d, or less (LeViT's key_dim)
        qk_cols, v_cols, groups = [], [], []
        fold, unreduced = None, []
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
                rowmax = p.approx.get("softmax.rowmax")  # None: exp of the scores themselves
                group.update(rowmax=rowmax.fn_name if rowmax else None, exp=p.approx["softmax.exp"].fn_name,
                             reciprocal=p.approx["softmax.reciprocal"].fn_name, shift=p.params["softmax.scale"].shift,
                             unreduced=p.params.get("softmax.unreduced"))  # plans.softmax_unreduced_bits
                if group["unreduced"]:  # these slots' products are truncated by 2f + q
                    unreduced = list(range(len(v_cols) - len(members), len(v_cols)))
            elif kind == "relu_softmax":
                scale = p.params["relu_softmax.scale"]
                group.update(reciprocal=p.approx["relu_softmax.reciprocal"].fn_name, trunc=scale.trunc,
                             cmp_bits=p.params.get("relu_softmax.bits", fx.k),
                             shift=scale.trunc + scale.shift, eps=repr(scale.eps_int / fx.scale))
            elif kind == "scaling":  # plans.scaling_fold: these slots multiply V' = V·C/2^f, truncated by f + g
                g, c = p.params["scaling.fold"]
                fold = {"slots": list(range(len(v_cols) - len(members), len(v_cols))), "g": g, "c": c,
                        "copy": c != fx.scale, "linear": scaling_linear(node)}
            groups.append(group)
        bias = None
        if len(node.inputs) > 3:  # [b, H, N, N]: the N x N block of each (head slot, image), in score order
            b_bias = self.graph.values[node.inputs[3]].shape[0]
            slots = [h for members in attention_groups(node).values() for h in members]
            bias = {"var": self.tensor(node.inputs[3]).var, "size": tokens * tokens,
                    "offsets": [((b % b_bias) * len(heads) + h) * tokens * tokens
                                for h in slots for b in range(batch)]}
        ctx.update(unreduced=unreduced, unreduced_bits=p.params.get("softmax.unreduced"),
                   unreduced_shift=2 * fx.f + p.params["softmax.scale"].shift if unreduced else 0)
        ctx.update(q=q, k=k, v=v, batch=batch, heads=heads, f=fx.f, bits=fx.k + fx.f, tokens=tokens, d=d, d_key=d_key, scores=f"s{len(self.tensors)}",
                   bias=bias, scale=float(node.attrs.get("scale", 1.0)), qk_cols=qk_cols, v_cols=v_cols, groups=groups,
                   fold=fold,
                   kinds=", ".join(f"{len(g['heads'])} {g['kind']}" for g in groups))

    def ctx_output(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        x = self.tensor(node.inputs[0])
        batch = self.program.batch  # the lowering checked that every output leads with it
        index = output_index(node, self.graph)
        ctx.update(x=x, result=f"r{len(self.tensors)}", width=x.size // batch, marker=output_marker(index),
                   reveal="argmax" if self.program.reveal == "argmax" and index == 0 else "logits")

    # --- generic kinds ----------------------------------------------------------------------------------------
    def ctx_unary(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        """neg, abs, and the element-wise approximations (their function from the prelude)."""
        ctx.update(x=self.tensor(node.inputs[0]), fn=p.approx[node.op].fn_name if node.op in p.approx else None)

    ctx_neg = ctx_abs = ctx_exp = ctx_sigmoid = ctx_tanh = ctx_erf = ctx_reciprocal = ctx_rsqrt = ctx_sqrt = ctx_unary

    def ctx_mul(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        shape = self.graph.values[node.outputs[0]].shape
        constants = constant_operands(node, self.graph)
        operands = [n for n in node.inputs if n not in constants] or node.inputs[:1]
        vectors = [self.vector(n, shape) for n in operands]
        if constants:
            vectors.append(repr(public_scalar(self.graph, constants[0])))
        ctx.update(vectors=vectors, shapes=[self.graph.values[n].shape for n in node.inputs])

    def ctx_div(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        shape = self.graph.values[node.outputs[0]].shape
        a, b = node.inputs
        divisor = public_scalar(self.graph, b)
        ctx.update(a_vec=self.vector(a, shape), a=self.tensor(a), b=self.tensor(b), fn=None,
                   inverse=None if divisor is None else repr(1.0 / divisor))
        if divisor is None:
            pattern = affine(broadcast_index(self.graph.values[b].shape, shape))
            assert pattern is not None
            same = tuple(self.graph.values[b].shape) == tuple(shape)
            ctx.update(fn=p.approx["reciprocal"].fn_name,
                       r_vec="inverse.get_vector()" if same else f"sfix.load_mem({pattern.expr('inverse.address')})")

    def ctx_matmul(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        a, b = (self.tensor(n) for n in node.inputs)
        a_shape, b_shape = (self.graph.values[n].shape for n in node.inputs)
        ctx.update(a=a, b=b, m=a_shape[-2], k=a_shape[-1], n=b_shape[-1],
                   pairs=matmul_instances(a_shape, b_shape))

    def ctx_reduce(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        shape = self.graph.values[node.inputs[0]].shape
        rows, cols, perm = reduction_block(node, shape)
        ctx.update(x=self.tensor(node.inputs[0]), x_vec=self.permuted(node.inputs[0], perm), rows=rows, cols=cols,
                   inv_cols=repr(1.0 / cols), rowmax=p.approx["rowmax"].fn_name if "rowmax" in p.approx else None,
                   mean=p.params.get("mean.scale"), shift=int(node.attrs.get("shift", 0)),
                   k=self.program.profile.k, f=self.program.profile.f)

    ctx_reduce_sum = ctx_reduce_mean = ctx_reduce_max = ctx_reduce

    def ctx_softmax(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        self.ctx_reduce(node, p, ctx)
        perm = reduction_block(node, self.graph.values[node.inputs[0]].shape)[2]
        fx = self.program.profile.fx
        ctx.update(exp=p.approx["exp"].fn_name, reciprocal=p.approx["reciprocal"].fn_name, f=fx.f, bits=fx.k + fx.f,
                   shift=p.params["softmax.scale"].shift, scatter=None if tuple(perm) == tuple(range(len(perm))) else
                   self.permutation(node.outputs[0], perm).expr(ctx["out"].var + ".address"))

    def ctx_clip(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        """hardsigmoid and hardswish are clips of alpha x + beta (bounds as raw fixed-point integers)."""
        fx = self.program.profile.fx
        if node.op == "clip":
            lo, hi, alpha, beta = node.attrs.get("min"), node.attrs.get("max"), None, None
        else:
            lo, hi = 0.0, 1.0
            alpha, beta = HARDSWISH if node.op == "hardswish" else (node.attrs.get("alpha", 0.2),
                                                                    node.attrs.get("beta", 0.5))
        ctx.update(x=self.tensor(node.inputs[0]), alpha=None if alpha is None else repr(float(alpha)),
                   beta=None if beta is None else repr(float(beta)),
                   lo=None if lo is None else int(fx.encode(lo)), hi=None if hi is None else int(fx.encode(hi)))

    ctx_hardsigmoid = ctx_hardswish = ctx_clip

    def ctx_where(self, node: Node, p: NodePlan, ctx: dict[str, Any]) -> None:
        shape = self.graph.values[node.outputs[0]].shape
        cond = np.broadcast_to(np.asarray(self.graph.values[node.inputs[0]].data) != 0, shape).reshape(-1)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], cond.astype(np.int8), [0]])))
        ctx.update(a_vec=self.vector(node.inputs[1], shape), b_vec=self.vector(node.inputs[2], shape),
                   ones=[(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2])], size=int(cond.size))

    # --- program --------------------------------------------------------------------------------------------
    def render(self, source: str) -> str:
        blocks = [b for b in (self.block(p) for p in self.program.node_plans) if b]
        fx = self.program.profile.fx
        approx_sources = [REGISTRY[use.op][use.choice].render(use.fn_name, fx, **use.kwargs)
                          for use in self.program.approx_uses()]
        tensors = [self.tensors[w.name] for w in self.weights]  # each at its share position in persistence files
        return self.env.get_template("program.mpc.j2").render(
            name=self.program.name, source=source, profile=self.program.profile, reveal=self.program.reveal,
            marker=OUTPUT_MARKER, approx_sources=approx_sources, blocks=blocks,
            weights=list(zip(tensors, np.cumsum([0] + [t.size for t in tensors[:-1]]).tolist())),
            client=self.tensor(self.graph.inputs[0]),
            client_code=CLIENT_CODE,
            batch=self.program.batch)


def transposed_weights(program: Program) -> set[str]:
    """The weights party 0 inputs transposed: a 2-D weight [in, out] used only as the right factor of linear nodes
    is stored [out, in], so that MP-SPDZ's ``matmulsm`` (``Processor/Processor.hpp``), which walks the second
    factor down a column for every output, reads it contiguously instead (``Matrix.direct_mul_trans``): the same
    bytes and rounds, ~35 % less time per product measured on 3a0a7b1d (vit_7_4_32's QKV shape, replicated-ring).
    """
    uses: dict[str, set[bool]] = {}
    for p in program.node_plans:
        for position, name in enumerate(p.node.inputs):
            uses.setdefault(name, set()).add(p.node.op == "linear" and position == 1)
    return {name for name, linear in uses.items() if linear == {True}
            and program.graph.values[name].role == "param" and len(program.graph.values[name].shape) == 2}


def render_program(program: Program, source: str = "",
                   template_set: str | None = None) -> tuple[str, list[tuple[Value, np.ndarray]]]:
    """(the .mpc source, the weights in party 0's input order, each with its data as the program reads it:
    :func:`transposed_weights` transposed)."""
    renderer = _Renderer(program, template_env(template_set))
    text = renderer.render(source)
    return text, [(w, w.data.T if w.name in renderer.transposed else w.data) for w in renderer.weights]
