"""Fixed-point arithmetic of MP-SPDZ's ``sfix`` emulated in int64 numpy.

A real value v is held as the integer round(v·2^f). MP-SPDZ computes in the ring Z_2^64 (``-R 64``); int64 numpy
arithmetic wraps modulo 2^64 in exactly the same way, so sums and products of raw integers here are bit-exact ring
emulations (a true value that leaves the signed 64-bit range wraps in MPC too).

Truncation: the ring protocols use *probabilistic* truncation (the result is ⌊x/2^m⌋ or ⌈x/2^m⌉, chosen at random,
error < 1 LSB). The reference cannot reproduce that randomness, so it rounds to nearest; the real engine then
differs by at most 1 LSB per truncation, and tests allow a few LSBs.

Range: comparisons (LTZ) decompose the low k bits, so a value consumed by a comparison must satisfy
|v| < 2^(k-f-1) (k=31, f=16: |v| < 16384). :meth:`FixedPoint.check_range` enforces that.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.errors import FixedPointRangeError


@dataclass(frozen=True)
class FixedPoint:
    """sfix parameters: ``f`` fractional bits, ``k`` total bits of a value that comparisons may consume."""

    f: int = 16
    k: int = 31

    def __post_init__(self) -> None:
        if not 0 < self.f < self.k <= 63:
            raise FixedPointRangeError(
                f"fixed point f={self.f}, k={self.k} is invalid: need 0 < f < k <= 63 (set --frac-bits below k)")

    @property
    def scale(self) -> int:
        return 1 << self.f

    @property
    def lsb(self) -> float:
        return 1.0 / self.scale

    @property
    def max_abs(self) -> float:
        """Largest magnitude (exclusive) a value consumed by a comparison may have: 2^(k-f-1)."""
        return float(2 ** (self.k - self.f - 1))

    def encode(self, x: np.ndarray | float) -> np.ndarray:
        """float -> int64 round(x·2^f)."""
        return np.rint(np.asarray(x, dtype=np.float64) * self.scale).astype(np.int64)

    def decode(self, x_int: np.ndarray | int) -> np.ndarray:
        return np.asarray(x_int, dtype=np.int64).astype(np.float64) / self.scale

    def trunc(self, x_int: np.ndarray, bits: int | None = None) -> np.ndarray:
        """Divide by 2^bits (default f) rounding to nearest: the reference of MP-SPDZ's probabilistic truncation."""
        bits = self.f if bits is None else bits
        x = np.asarray(x_int, dtype=np.int64)
        if bits == 0:
            return x.copy()
        return (x + np.int64(1 << (bits - 1))) >> np.int64(bits)

    def mul(self, a_int: np.ndarray, b_int: np.ndarray) -> np.ndarray:
        """sfix × sfix: ring product, then one truncation by f."""
        return self.trunc(np.multiply(np.asarray(a_int, np.int64), np.asarray(b_int, np.int64)))

    def mul_public(self, a_int: np.ndarray, c: float | np.ndarray) -> np.ndarray:
        """sfix × public cfix c: c is encoded with f bits, local product, one truncation."""
        return self.mul(a_int, self.encode(c))

    def matmul(self, a_int: np.ndarray, b_int: np.ndarray) -> np.ndarray:
        """sfix matrix product as MP-SPDZ's ``Matrix.dot``: raw products summed in the ring, ONE truncation per output.

        numpy's int64 matmul wraps modulo 2^64 like the ring, so the sum is exact whenever the true sum of raw
        products fits in 63 bits (|a|,|b| < 2^k with k=31 gives products below 2^62: K up to 2 always fits,
        and realistic activations/weights of a few units leave room for K in the millions).
        """
        return self.trunc(np.matmul(np.asarray(a_int, np.int64), np.asarray(b_int, np.int64)))

    def check_range(self, x_int: np.ndarray, name: str, bits: int | None = None) -> None:
        """Raise FixedPointRangeError when a value consumed by a comparison has |v| >= 2^(k-f-1), or, for a
        comparison of bit length ``bits`` (chosen from the calibrated range, compiler.lowering.comparison_bits),
        |v| >= 2^(bits-f-1): beyond it MP-SPDZ's comparison would silently compare wrapped values."""
        x = np.asarray(x_int, dtype=np.int64)
        if x.size == 0:
            return
        if bits is not None and bits < self.k:
            worst = int(np.max(np.abs(x)))
            if worst >= 1 << (bits - 1):
                raise FixedPointRangeError(
                    f"tensor {name!r} reaches |v| = {worst / self.scale:.6g}, outside the range |v| < "
                    f"{2.0 ** (bits - 1 - self.f):g} its {bits}-bit comparison was calibrated for: calibrate on "
                    f"inputs like these (mpcvit-compile --calibrate)")
        limit = np.int64(1) << np.int64(self.k - 1)
        worst = int(np.max(np.abs(x)))
        if worst >= limit:
            raise FixedPointRangeError(
                f"tensor {name!r} reaches |v| = {worst / self.scale:.6g}, outside the comparison range "
                f"|v| < {self.max_abs:g} of fixed point f={self.f}, k={self.k}: lower the input scale or --frac-bits")
