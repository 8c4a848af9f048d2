"""Approximations of the non-linear functions, one module per op, registered in :data:`REGISTRY`.

``REGISTRY[op][choice]`` is an :class:`Approximation`:

* ``reference(x_int, fx, **params) -> int64`` — fixed point in, fixed point out (same f); emulates the MPC
  computation step by step, truncations included (nearest rounding, see :mod:`compiler.fixedpoint`).
* ``template`` — path under ``spdz_templates/`` of a jinja2 template rendering ONE MP-SPDZ function
  ``def {{ fn_name }}(x):`` taking and returning an sfix *vector* (a register vector of ``size`` elements); the
  params are rendered in as compile-time constants. :meth:`Approximation.render` renders it.
* ``steps(n, profile, **params) -> list[Step]`` — what one vectorised call on n elements costs, in primitive steps
  (or one fitted step ``"<op>:<choice>"`` for MP-SPDZ built-ins). :meth:`Approximation.cost` prices them.
* ``compared(**params) -> float`` — for approximations whose comparisons take a bit length: the largest
  |constant| they compare with (a cut, a clipping bound, the top threshold). Such an approximation also takes the
  param ``bits`` (the comparisons' bit length k', default the profile's k; chosen per call site by
  :func:`compiler.lowering.plans.comparison_bits`): its template compares with ``bit_length=bits``, its comparison
  steps are priced at ``bits``, and the executor checks the input against that range (the reference itself is the
  same: inside the range MP-SPDZ's comparison is exact).
* ``domain`` / ``max_abs_error`` — the input interval (default params) over which the absolute error against the
  exact function stays below ``max_abs_error`` (tests sample the whole domain densely, in fixed point);
  ``bounds(**params)`` gives both for other params (e.g. the reciprocal's denominator range).

Shapes: element-wise ops take any shape. ``rowmax`` reduces the last axis (``reference`` returns shape[:-1]);
its MP-SPDZ function takes the rows × cols block *column-major* (all rows' column 0, then column 1, …) so that
each tree level is one comparison on two contiguous halves, and returns the ``rows`` maxima.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compiler.cost.primitives import Cost, Step, step_cost
from compiler.errors import CompileError
from compiler.fixedpoint import FixedPoint

TEMPLATE_ROOT = Path(__file__).resolve().parents[2] / "spdz_templates"

Reference = Callable[..., np.ndarray]
Steps = Callable[..., list[Step]]
Bounds = Callable[..., tuple[tuple[float, float], float]]


@dataclass(frozen=True)
class Approximation:
    op: str
    choice: str
    reference: Reference
    template: str
    steps: Steps
    exact: Callable[[np.ndarray], np.ndarray]  # the float function it approximates (tests, error reports)
    bounds: Bounds  # (**params) -> ((lo, hi), max_abs_error)
    params: dict[str, Any] = field(default_factory=dict)  # defaults, also the template's constants
    constants: Callable[[FixedPoint, dict[str, Any]], dict[str, Any]] | None = None  # derived template constants
    compared: Callable[..., float] | None = None  # (**params) -> largest |constant| compared; None: no bit length
    doc: str = ""

    @property
    def domain(self) -> tuple[float, float]:
        return self.bounds(**self.params)[0]

    @property
    def max_abs_error(self) -> float:
        return self.bounds(**self.params)[1]

    def with_params(self, params: dict[str, Any]) -> dict[str, Any]:
        known = set(self.params) | ({"bits"} if self.compared else set())
        unknown = set(params) - known
        if unknown:
            raise CompileError(f"approximation {self.op}:{self.choice} has no parameter(s) {sorted(unknown)}; "
                               f"known: {sorted(known)}")
        return {**self.params, **params}

    def split_bits(self, params: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        """(the params of reference/steps/bounds/constants, the comparisons' bit length or None for k)."""
        values = self.with_params(params)
        return values, values.pop("bits", None)

    def run(self, x_int: np.ndarray, fx: FixedPoint, **params: Any) -> np.ndarray:
        values, _ = self.split_bits(params)
        return self.reference(np.asarray(x_int, dtype=np.int64), fx, **values)

    def call_steps(self, size: int, profile: Any, /, **params: Any) -> list[Step]:
        """The steps of one call on ``size`` elements, its comparisons at the call site's bit length."""
        values, bits = self.split_bits(params)
        steps = self.steps(size, profile, **values)
        steps = [replace(s, bits=bits) if bits and s.prim in ("ltz", "ltz2", "relu") else s for s in steps]
        if bits and values.get("drop"):  # a truncation by ``drop`` bits before the comparisons sees longer inputs
            steps = [replace(s, bits=bits + values["drop"]) if s.prim == "trunc" else s for s in steps]
        return steps

    def cost(self, size: int, profile: Any, /, **params: Any) -> Cost:
        return sum((step_cost(s, profile) for s in self.call_steps(size, profile, **params)), Cost())

    def render(self, fn_name: str, fx: FixedPoint, **params: Any) -> str:
        """The MP-SPDZ source of ``def fn_name(x)`` with this approximation's constants filled in."""
        values, bits = self.split_bits(params)
        derived = self.constants(fx, values) if self.constants else {}
        return _templates().get_template(self.template).render(fn_name=fn_name, f=fx.f, k=fx.k, bits=bits or fx.k,
                                                               **{**values, **derived})


@lru_cache(maxsize=1)
def _templates() -> Any:
    """One jinja2 environment per process, so each template is parsed once."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_ROOT)),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


REGISTRY: dict[str, dict[str, Approximation]] = {}


def register(approx: Approximation) -> Approximation:
    REGISTRY.setdefault(approx.op, {})[approx.choice] = approx
    return approx


def get(op: str, choice: str) -> Approximation:
    if op not in REGISTRY:
        raise CompileError(f"no approximation for op {op!r}; known ops: {', '.join(sorted(REGISTRY))}")
    if choice not in REGISTRY[op]:
        raise CompileError(f"approximation {op!r} has no choice {choice!r}; choose one of "
                           f"{', '.join(sorted(REGISTRY[op]))}")
    return REGISTRY[op][choice]


from compiler.approx import exp, gelu, reciprocal, rowmax, rsqrt  # noqa: E402,F401  (registration)
from compiler.approx import erf, sigmoid, sqrt, tanh  # noqa: E402,F401  (registration; sqrt uses rsqrt)
