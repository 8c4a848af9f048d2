"""Benchmarks: the benchmark matrix (cost model and real MP-SPDZ runs), the ml-baseline comparison, plots, and the
CI regression benchmark with its committed baseline."""
