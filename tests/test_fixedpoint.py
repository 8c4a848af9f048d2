"""FixedPoint emulates sfix: encoding, nearest truncation, ring (mod 2^64) sums, matmul with one truncation."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.errors import FixedPointRangeError
from compiler.fixedpoint import FixedPoint

fx = FixedPoint(16, 31)
rng = np.random.default_rng(7)


def test_encode_decode_round_trip_within_half_lsb():
    x = rng.uniform(-100, 100, 1000)
    assert np.max(np.abs(fx.decode(fx.encode(x)) - x)) <= 0.5 / 2 ** 16
    assert fx.encode(1.5).dtype == np.int64 and int(fx.encode(1.5)) == 98304


def test_trunc_is_nearest_rounding_of_division():
    x = rng.integers(-2 ** 40, 2 ** 40, 5000)
    for bits in (1, 2, 8, 16):
        assert np.array_equal(fx.trunc(x, bits), np.floor(x / 2 ** bits + 0.5).astype(np.int64))


def test_mul_and_mul_public_match_float_within_one_lsb():
    a, b = rng.uniform(-50, 50, 2000), rng.uniform(-50, 50, 2000)
    ai, bi = fx.encode(a), fx.encode(b)
    exact = fx.decode(ai) * fx.decode(bi)
    assert np.max(np.abs(fx.decode(fx.mul(ai, bi)) - exact)) <= 0.5 / 2 ** 16
    assert np.max(np.abs(fx.decode(fx.mul_public(ai, 0.3700103759765625)) - fx.decode(ai) * 0.3700103759765625)) \
        <= 0.5 / 2 ** 16


def test_matmul_sums_raw_products_and_truncates_once():
    a, b = rng.uniform(-4, 4, (5, 64)), rng.uniform(-4, 4, (64, 3))
    ai, bi = fx.encode(a), fx.encode(b)
    exact = [[sum(int(ai[i, k]) * int(bi[k, j]) for k in range(64)) for j in range(3)] for i in range(5)]
    expected = np.array([[(v + 2 ** 15) >> 16 for v in row] for row in exact], dtype=np.int64)  # python ints
    assert np.array_equal(fx.matmul(ai, bi), expected)
    # one truncation, not one per product: differs from summing truncated products
    assert not np.array_equal(fx.matmul(ai, bi), fx.mul(ai[:, :, None], bi[None]).sum(axis=1))


def test_matmul_wraps_like_the_64_bit_ring():
    # raw sum 2^71 + 15·2^32: modulo 2^64 only 15·2^32 is left, which truncates to the encoding of 15.0
    a = np.array([[2 ** 40, 2 ** 40, 3 * 2 ** 16]], dtype=np.int64)
    b = np.array([[2 ** 30], [2 ** 30], [5 * 2 ** 16]], dtype=np.int64)
    assert int(fx.matmul(a, b)[0, 0]) == int(fx.encode(15.0)) == 15 * 2 ** 16


def test_check_range_names_the_tensor_and_the_fix():
    fx.check_range(fx.encode(np.array([16383.0, -16383.0])), "ok")
    with pytest.raises(FixedPointRangeError, match=r"'attn.scores'.*16384.*frac-bits"):
        fx.check_range(fx.encode(np.array([1.0, 20000.0])), "attn.scores")


def test_invalid_precision_is_rejected():
    with pytest.raises(FixedPointRangeError):
        FixedPoint(f=40, k=31)
