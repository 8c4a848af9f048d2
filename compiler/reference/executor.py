"""Run a lowered :class:`~compiler.lowering.Program` in int64 fixed point, beside a float64 evaluation.

Every node is computed twice: in fixed point exactly as its template computes it under MPC (the same calls in the
same order, one truncation per sfix×sfix product or matrix product, public multiplies truncated, approximations
through their ``reference``), and in float64 with the exact functions from the float inputs. The per-node record
is the error of the former against the latter: ``mpcvit-compile --check`` prints it per layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from compiler.approx import REGISTRY
from compiler.errors import CompileError, FixedPointRangeError, UserError
from compiler.fixedpoint import FixedPoint
from compiler.ir import Graph
from compiler.ir_eval import KERNELS
from compiler.lowering.plans import (HARDSWISH, ApproxUse, NodePlan, Program, attention_groups, client_input,
                                     constant_operands, matmul_instances, public_scalar, reduction_block,
                                     scaling_linear)


@dataclass(frozen=True)
class NodeRecord:
    name: str
    op: str
    output: str
    shape: tuple[int, ...]
    max_abs_error: float  # fixed point vs float64
    max_abs_value: float  # float64 magnitude, to read the error against

    @property
    def rel_error(self) -> float:
        return self.max_abs_error / max(self.max_abs_value, 1e-12)


@dataclass
class ExecResult:
    outputs: dict[str, np.ndarray]  # decoded fixed-point outputs (float64)
    per_node: list[NodeRecord]
    float_outputs: dict[str, np.ndarray] = field(default_factory=dict)
    ints: dict[str, np.ndarray] = field(default_factory=dict)  # every tensor in fixed point


def exact_int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` of int64 arrays modulo 2^64 (the ring), computed exactly with float64 BLAS on limbs.

    numpy's integer matmul has no BLAS and is ~50× slower. Each operand is split into limbs small enough that
    every float64 partial product sum stays below 2^53 (exact); the partial results recombine in int64.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    depth = a.shape[-1]
    bits = (52 - max(1, math.ceil(math.log2(max(depth, 2))))) // 2
    result: np.ndarray | None = None
    for i, la in enumerate(_limbs(a, bits)):
        for j, lb in enumerate(_limbs(b, bits)):
            shift = bits * (i + j)
            if shift >= 64:
                continue
            part = np.rint(float_matmul(la, lb)).astype(np.int64) * np.int64(1 << shift if shift < 63 else -(1 << 63))
            result = part if result is None else result + part
    assert result is not None
    return result


def float_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b``; a stack times one matrix runs as ONE 2-D GEMM (OpenBLAS threads a stack of small GEMMs badly)."""
    if b.ndim == 2 and a.ndim > 2:
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])
    return np.matmul(a, b)


def _limbs(x: np.ndarray, bits: int) -> list[np.ndarray]:
    """x = sum_i limb_i · 2^(bits·i); unsigned low limbs, signed top limb; as float64."""
    top = int(np.max(np.abs(x))) if x.size else 0
    count = max(1, math.ceil((top.bit_length() + 1) / bits))
    limbs, rest, mask = [], x, np.int64((1 << bits) - 1)
    for _ in range(count - 1):
        limbs.append((rest & mask).astype(np.float64))
        rest = rest >> np.int64(bits)
    limbs.append(rest.astype(np.float64))
    return limbs


class _Executor:
    def __init__(self, program: Program) -> None:
        self.program = program
        self.graph: Graph = program.graph
        self.fx: FixedPoint = program.profile.fx
        self.ints: dict[str, np.ndarray] = {}
        self.floats: dict[str, np.ndarray] = {}
        # LayerNorm outputs handed on untruncated (plans.RawInput): what the program stores; ``ints`` keeps them
        # truncated (at f, like every other tensor) for the per-layer error report
        self.raw: dict[str, np.ndarray] = {}
        for value in self.graph.values.values():
            if value.role in ("param", "public") and value.data is not None:
                data = np.asarray(value.data, dtype=np.float64)
                self.floats[value.name] = data
                self.ints[value.name] = self.fx.encode(data)

    # --- helpers -------------------------------------------------------------------------------------------
    def approx(self, use: ApproxUse, x_int: np.ndarray, tensor: str) -> np.ndarray:
        bits = use.kwargs.get("bits")  # the call site's comparison bit length, on x / 2^drop (rowmax's drop)
        self.fx.check_range(x_int, tensor, bits + use.kwargs.get("drop", 0) if bits else None)
        return REGISTRY[use.op][use.choice].run(x_int, self.fx, **use.kwargs)

    # --- ops: each returns (fixed-point int64, float64) -----------------------------------------------------
    def run_node(self, p: NodePlan) -> tuple[np.ndarray, np.ndarray]:
        node = p.node
        xi = [self.ints[n] for n in node.inputs]
        xf = [self.floats[n] for n in node.inputs]
        op = node.op
        if op == "linear":
            w_i, w_f = xi[1], xf[1]
            raw = p.params.get("raw_input")
            yi = self.fx.trunc(exact_int_matmul(self.raw[raw.layernorm], w_i), raw.shift) if raw else \
                self.fx.trunc(exact_int_matmul(xi[0], w_i))
            yf = float_matmul(xf[0], w_f)
            if len(xi) > 2:
                yi, yf = yi + xi[2], yf + xf[2]
            return yi, yf
        if op == "add":
            return xi[0] + xi[1], xf[0] + xf[1]
        if op == "sub":
            return xi[0] - xi[1], xf[0] - xf[1]
        if op == "scale":
            factor = float(node.attrs["factor"])
            return self.fx.mul_public(xi[0], factor), xf[0] * factor
        if op == "layout":
            index = np.asarray(node.attrs["index"])
            return (np.concatenate([a.reshape(-1) for a in xi])[index],
                    np.concatenate([a.reshape(-1) for a in xf])[index])
        if op == "relu":
            self.fx.check_range(xi[0], node.inputs[0], p.params["bits"])
            return np.maximum(xi[0], 0), np.maximum(xf[0], 0.0)
        if op == "gelu":
            use = p.approx["gelu"]
            return self.approx(use, xi[0], node.inputs[0]), KERNELS["gelu"](node, xf)
        if op == "layernorm":
            return self.layernorm(p, xi, xf)
        if op == "attention":
            return self.attention(p, xi, xf)
        if op == "output":
            return xi[0], xf[0]
        if op in GENERIC:
            return GENERIC[op](self, p, xi, xf), KERNELS[op](node, xf)
        raise CompileError(f"node {node.name!r}: op {node.op!r} has no reference implementation")

    # --- generic kinds: the fixed-point side only; the float side is compiler.ir_eval's kernel ---------------
    def out_shape(self, p: NodePlan) -> tuple[int, ...]:
        return self.graph.values[p.node.outputs[0]].shape

    def broadcast(self, p: NodePlan, x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(x, self.out_shape(p))

    def mul(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> np.ndarray:
        constants = constant_operands(p.node, self.graph)
        if constants:  # a public scalar: one public multiply (cfix), one truncation
            other = xi[1] if p.node.inputs[0] == constants[0] else xi[0]
            return self.fx.mul_public(self.broadcast(p, other), public_scalar(self.graph, constants[0]))
        return self.fx.mul(self.broadcast(p, xi[0]), self.broadcast(p, xi[1]))

    def div(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> np.ndarray:
        divisor = public_scalar(self.graph, p.node.inputs[1])
        if divisor is not None:
            return self.fx.mul_public(self.broadcast(p, xi[0]), 1.0 / divisor)
        r = self.approx(p.approx["reciprocal"], xi[1], f"{p.node.inputs[1]} (divisor)")
        return self.fx.mul(self.broadcast(p, xi[0]), self.broadcast(p, r))

    def matmul(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> np.ndarray:
        a, b = xi
        pairs = matmul_instances(a.shape, b.shape)
        if pairs is None:
            return self.fx.trunc(exact_int_matmul(a, b))
        a3, b3 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
        ia, ib = (np.array(idx, dtype=np.int64) for idx in zip(*pairs))
        return self.fx.trunc(exact_int_matmul(a3[ia], b3[ib])).reshape(self.out_shape(p))

    def block(self, p: NodePlan, x: np.ndarray) -> tuple[np.ndarray, int, tuple[int, ...]]:
        """x reordered as the rows x cols block whose rows the node reduces (reduced axes last)."""
        rows, cols, perm = reduction_block(p.node, x.shape)
        return np.transpose(x, perm).reshape(rows, cols), cols, perm

    def reduce(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> np.ndarray:
        x, cols, _ = self.block(p, xi[0])
        if p.node.op == "reduce_max":
            y = self.approx(p.approx["rowmax"], x, p.node.inputs[0])
        else:
            y = x.sum(-1)
            if p.node.op == "reduce_mean":  # plans.mean_scale: sum (/ 2^p) · round(2^(f+g+p)/C) / 2^(f+g)
                scale = p.params["mean.scale"]
                y = self.fx.trunc(self.fx.trunc(y, scale.shift) * scale.mul, self.fx.f + scale.bits)
            elif p.node.attrs.get("shift"):  # a pooled sum pre-scaled by 2^-shift (passes.mean_as_sum)
                y = self.fx.trunc(y, int(p.node.attrs["shift"]))
        return y.reshape(self.out_shape(p))

    def softmax(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> np.ndarray:
        x, cols, perm = self.block(p, xi[0])
        name = p.node.outputs[0]
        m = self.approx(p.approx["rowmax"], x, f"{name} (softmax input)") if "rowmax" in p.approx else \
            np.zeros(len(x), np.int64)  # exp of the input itself (plans.softmax_uses)
        e = self.approx(p.approx["exp"], x - m[:, None], f"{name} (softmax exponent)")
        r = self.approx(p.approx["reciprocal"], e.sum(-1), f"{name} (softmax row sums)")
        y = self.fx.trunc(e * r[:, None], self.fx.f + p.params["softmax.scale"].shift)  # r is 2^q/sum
        permuted = [xi[0].shape[a] for a in perm]
        return np.transpose(y.reshape(permuted), np.argsort(perm))

    def unary(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> np.ndarray:
        return self.approx(p.approx[p.node.op], xi[0], p.node.inputs[0])

    def clip(self, z: np.ndarray, lo: float | None, hi: float | None, tensor: str, bits: int) -> np.ndarray:
        """helpers' mpcvit_clip: z + [z < lo](lo - z) + [z >= hi](hi - z), one comparison call of ``bits``."""
        self.fx.check_range(z, tensor, bits)
        y = z.copy()
        if lo is not None:
            lo_i = self.fx.encode(lo)
            y = y + (z < lo_i).astype(np.int64) * (lo_i - z)
        if hi is not None:
            hi_i = self.fx.encode(hi)
            y = y + (z >= hi_i).astype(np.int64) * (hi_i - z)
        return y

    def hard(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> np.ndarray:
        node, x = p.node, xi[0]
        if node.op == "clip":
            return self.clip(x, node.attrs.get("min"), node.attrs.get("max"), node.inputs[0], p.params["bits"])
        alpha, beta = HARDSWISH if node.op == "hardswish" else (node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5))
        h = self.clip(self.fx.mul_public(x, alpha) + self.fx.encode(beta), 0.0, 1.0, node.outputs[0], p.params["bits"])
        return self.fx.mul(x, h) if node.op == "hardswish" else h

    def abs(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> np.ndarray:
        self.fx.check_range(xi[0], p.node.inputs[0], p.params["bits"])
        return xi[0] - 2 * (xi[0] < 0).astype(np.int64) * xi[0]

    def where(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> np.ndarray:
        """Local select by a public mask: b + mask·(a − b), exact in the ring."""
        mask = self.broadcast(p, xf[0] != 0)
        return np.where(mask, self.broadcast(p, xi[1]), self.broadcast(p, xi[2]))

    def layernorm(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The template's steps (:class:`~compiler.lowering.plans.LayerNormScale`): mean, centring, pre-scale by
        σ, Σ squares (raw when calibrated) · 1/C (+ ε·σ²), rsqrt, (x - mean)·σ·γ·rsqrt + β; the σ cancels exactly.
        With ``moments``: σ²·var from C·Σx² - (Σx)² and σ·(x - mean)·γ from (C·x - Σx)·γ, one truncation each."""
        node, fx = p.node, self.fx
        x, gamma, beta = xi
        cols = x.shape[-1]
        scale = p.params["scale"]
        sums = x.sum(-1, keepdims=True)
        affine = p.params.get("affine", True)
        if scale.moments:  # int64 wraps like the ring: C·Σx² - (Σx)² is exact where its true value fits
            var = fx.trunc((x * x).sum(-1) * cols - sums[..., 0] * sums[..., 0], fx.f + 2 * scale.shift)
            scaled = fx.trunc((x * cols - sums) * gamma, fx.f + scale.shift) if affine else x * cols - sums
        else:
            if scale.exact:
                diff = fx.trunc((x * cols - sums) * scale.centre_mul, fx.f + scale.centre_bits)
            else:
                diff = (x - fx.trunc(sums * scale.centre_mul, fx.f + scale.centre_bits)) << np.int64(scale.shift)
            if scale.raw_squares:
                var = fx.trunc((diff * diff).sum(-1) * scale.var_mul, 2 * fx.f + scale.var_bits)
            else:
                var = fx.trunc(fx.mul(diff, diff).sum(-1) * scale.var_mul, fx.f + scale.var_bits)
            scaled = fx.mul(diff, gamma) if affine else diff
        var = var + scale.eps_int
        label = f"{node.outputs[0]} (layernorm variance"
        domain = p.params.get("rsqrt_domain")
        if domain is not None and var.size and int(var.max()) > fx.encode(domain["hi"]):
            # above its domain the rsqrt's Newton start diverges: fail here rather than reveal garbage under MPC
            raise FixedPointRangeError(
                f"tensor {label} scaled by {scale.sigma:g}^2) reaches {fx.decode(var.max()):.6g}, above the calibrated "
                f"rsqrt domain top {domain['hi']:.6g}; calibrate on inputs like these (mpcvit-compile --calibrate)")
        inv = self.approx(p.approx["rsqrt"], var, label + ")")
        if not affine:  # γ = 1, β = 0: (x - mean)·σ·rsqrt, or with the moments trunc((C·x - Σx)·rsqrt, f + g)
            if p.params.get("raw_output"):
                self.raw[node.outputs[0]] = scaled * inv[..., None]
            yi = fx.trunc(scaled * inv[..., None], fx.f + (scale.shift if scale.moments else 0))
        else:
            yi = fx.mul(scaled, inv[..., None]) + beta
        x_f, gamma_f, beta_f = xf
        mu = x_f.mean(-1, keepdims=True)
        var_f = ((x_f - mu) ** 2).mean(-1, keepdims=True)
        yf = (x_f - mu) / np.sqrt(var_f + float(node.attrs.get("eps", 1e-5))) * gamma_f + beta_f
        return yi, yf

    def attention(self, p: NodePlan, xi: list[np.ndarray], xf: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        node, fx = p.node, self.fx
        heads = node.attrs["heads"]
        d, scale = int(node.attrs["head_dim"]), float(node.attrs.get("scale", 1.0))
        batch, tokens = xi[0].shape[:2]
        name = node.outputs[0]

        def per_head(x: np.ndarray, key: str) -> np.ndarray:  # [H, B, N, d]
            return np.stack([x[..., np.asarray(h[key])] for h in heads])

        qi, ki, vi = (per_head(xi[j], key) for j, key in enumerate(("q_cols", "k_cols", "v_cols")))
        qf, kf, vf = (per_head(xf[j], key) for j, key in enumerate(("q_cols", "k_cols", "v_cols")))
        si = fx.trunc(exact_int_matmul(qi, np.swapaxes(ki, -1, -2)))
        sf = qf @ np.swapaxes(kf, -1, -2)
        if scale != 1.0:
            si, sf = fx.mul_public(si, scale), sf * scale
        if len(xi) > 3:  # bias [b, H, N, N] -> per head [H, b, N, N], b broadcasting over the batch: a local add
            si, sf = si + np.swapaxes(xi[3], 0, 1), sf + np.swapaxes(xf[3], 0, 1)
        pi = np.empty_like(si)
        pf = np.empty_like(sf)
        shifts = np.full(len(heads), fx.f)  # each head's truncation of its probabilities x V product
        linear = None  # (scaling heads, their outputs) when formed as Q·(Kᵀ·V')
        for kind, members in attention_groups(node).items():
            s_i, s_f = si[members], sf[members]
            if kind == "softmax":
                z = s_i
                if "softmax.rowmax" in p.approx:  # else exp of the scores themselves (plans.softmax_uses)
                    m = self.approx(p.approx["softmax.rowmax"], s_i.reshape(-1, tokens), f"{name} (softmax scores)")
                    z = s_i - m.reshape(s_i.shape[:-1])[..., None]
                e = self.approx(p.approx["softmax.exp"], z, f"{name} (softmax exponent)")
                r = self.approx(p.approx["softmax.reciprocal"], e.sum(-1), f"{name} (softmax row sums)")
                shift = p.params["softmax.scale"].shift
                if p.params.get("softmax.unreduced"):  # e·r raw, P·V truncated by 2f + q (plans.softmax_unreduced_bits)
                    pi[members] = e * r[..., None]
                    shifts[members] = 2 * fx.f + shift
                else:
                    pi[members] = fx.trunc(e * r[..., None], fx.f + shift)
                ef = np.exp(s_f - s_f.max(-1, keepdims=True))
                pf[members] = ef / ef.sum(-1, keepdims=True)
            elif kind == "relu_softmax":
                fx.check_range(s_i, f"{name} (relu_softmax scores)", p.params["relu_softmax.bits"])
                a = np.maximum(s_i, 0)
                scale = p.params["relu_softmax.scale"]  # plans.relu_softmax_scale
                total = fx.trunc(a.sum(-1), scale.trunc) + scale.eps_int
                r = self.approx(p.approx["relu_softmax.reciprocal"], total, f"{name} (relu_softmax row sums)")
                pi[members] = fx.trunc(a * r[..., None], fx.f + scale.trunc + scale.shift)
                af = np.maximum(s_f, 0.0)
                pf[members] = af / (af.sum(-1, keepdims=True) + float(node.attrs.get("eps", 0.0) or 0.0))
            else:  # scaling: 1/N folded into V (plans.scaling_fold), the product truncated by f + g
                g, c = p.params["scaling.fold"]
                pi[members] = s_i
                vi[members] = fx.trunc(vi[members] * c, fx.f)
                shifts[members] = fx.f + g
                pf[members] = s_f / tokens
                if scaling_linear(node):  # Q·(Kᵀ·V'): M = trunc(Kᵀ·V', f + g), out = trunc(Q·M, f)
                    m = fx.trunc(exact_int_matmul(np.swapaxes(ki[members], -1, -2), vi[members]), fx.f + g)
                    linear = (members, fx.trunc(exact_int_matmul(qi[members], m)))
        raw = exact_int_matmul(pi, vi)  # [H, B, N, d]
        unreduced = p.params.get("softmax.unreduced")
        if unreduced:
            members = attention_groups(node)["softmax"]
            worst = int(np.max(np.abs(raw[members])))
            if worst >= 1 << (unreduced - 1):
                raise FixedPointRangeError(f"tensor {name!r}: the softmax heads' unreduced P·V reaches 2^"
                                           f"{math.log2(worst):.1f}, beyond the {unreduced}-bit truncation the "
                                           f"calibrated |V| was given: calibrate on inputs like these "
                                           f"(mpcvit-compile --calibrate)")
        oi = np.stack([fx.trunc(raw[h], int(shifts[h])) for h in range(len(heads))])
        if linear is not None:
            oi[linear[0]] = linear[1]
        of = pf @ vf
        return (np.moveaxis(oi, 0, 2).reshape(batch, tokens, len(heads) * d),
                np.moveaxis(of, 0, 2).reshape(batch, tokens, len(heads) * d))


GENERIC: dict[str, Callable[..., np.ndarray]] = {
    "neg": lambda ex, p, xi, xf: -xi[0],
    "abs": _Executor.abs,
    "mul": _Executor.mul,
    "div": _Executor.div,
    "matmul": _Executor.matmul,
    "reduce_sum": _Executor.reduce,
    "reduce_mean": _Executor.reduce,
    "reduce_max": _Executor.reduce,
    "softmax": _Executor.softmax,
    **{op: _Executor.unary for op in ("exp", "sigmoid", "tanh", "erf", "reciprocal", "rsqrt", "sqrt")},
    **{op: _Executor.hard for op in ("clip", "hardsigmoid", "hardswish")},
    "where": _Executor.where,
}


# outputs truncated from sfix products (exp and 1/x: MP-SPDZ's built-ins end in products, and beyond the range
# their results are garbage, e.g. e^x for x > ln 2^(k-f-1) ≈ 9.7)
PRODUCT_OPS = ("linear", "scale", "gelu", "layernorm", "attention", "mul", "div", "matmul", "reduce_mean", "softmax",
               "hardswish", "sqrt", "exp", "reciprocal")


def check_product_range(rec: NodeRecord, fx: FixedPoint) -> None:
    """A product's output v is truncated from v·2^(2f), which MP-SPDZ's (probabilistic) truncation takes to be a
    (k+f)-bit value: from |v| >= 2^(k-f-1) on the result is garbage in MPC, with no comparison to notice, and from
    v·2^(2f) >= 2^63 on it wraps the ring here as well (e.g. logits of a few thousand at --frac-bits 28)."""
    limit = min(2.0 ** (fx.k - fx.f - 1), 2.0 ** (63 - 2 * fx.f))
    if rec.max_abs_value >= limit:
        raise FixedPointRangeError(
            f"tensor {rec.output!r} ({rec.op} {rec.name!r}) reaches |v| = {rec.max_abs_value:.6g}, beyond the "
            f"|v| < {limit:g} that sfix products allow at f={fx.f}, k={fx.k}; lower the input scale or --frac-bits")


def execute(program: Program, inputs: dict[str, np.ndarray],
            on_node: Callable[[NodeRecord], None] | None = None) -> ExecResult:
    # One BLAS thread: the products here are small, and OpenBLAS's thread hand-offs cost more than they save
    # (10x slower on a loaded 2-core machine). The float side gives NaN/inf outside an op's domain silently, as
    # compiler.ir_eval does (calibration names such nodes).
    with threadpool_limits(1, user_api="blas"), np.errstate(invalid="ignore", divide="ignore"):
        return _execute(program, inputs, on_node)


def _execute(program: Program, inputs: dict[str, np.ndarray],
             on_node: Callable[[NodeRecord], None] | None) -> ExecResult:
    """Run ``program`` on float ``inputs`` in fixed point and float64.

    ``inputs`` is keyed by graph input name: the image batch as the model takes it (laid out here as the client
    does) or already in the input tensor's (patch-wise) shape.
    """
    ex = _Executor(program)
    graph = program.graph
    for name in graph.inputs:
        if name not in inputs:
            raise UserError(f"input {name!r} is missing; the program takes {', '.join(graph.inputs)}")
        data = np.asarray(inputs[name], dtype=np.float64)
        if data.shape != graph.values[name].shape:
            data = client_input(graph, data)
        ex.floats[name] = data
        ex.ints[name] = program.profile.fx.encode(data)
    records: list[NodeRecord] = []
    for p in program.node_plans:
        if p.node.op == "input":
            continue
        yi, yf = ex.run_node(p)
        out = (p.node.outputs or p.node.inputs)[0]
        ex.ints[out], ex.floats[out] = yi, yf
        err = float(np.max(np.abs(ex.fx.decode(yi) - yf))) if yf.size else 0.0
        rec = NodeRecord(p.node.name or out, p.node.op, out, tuple(yf.shape), err,
                         float(np.max(np.abs(yf))) if yf.size else 0.0)
        if p.node.op in PRODUCT_OPS:
            check_product_range(rec, ex.fx)
        records.append(rec)
        if on_node is not None:
            on_node(rec)
    outputs = {n: ex.fx.decode(ex.ints[n]) for n in graph.outputs}
    return ExecResult(outputs, records, {n: ex.floats[n] for n in graph.outputs}, ex.ints)
