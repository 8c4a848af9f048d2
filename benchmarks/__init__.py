"""Benchmarks: the benchmark matrix (cost model and real MP-SPDZ runs), the ml-baseline comparison, plots, and the
CI regression benchmark with its committed baseline."""

# The matrix's axes, importable without torch so that `mpcvit --help` stays quick.
ATTENTION_CONFIGS = ("softmax", "relu_softmax", "scaling", "mu0.1", "mu0.3", "mu0.5", "mu0.7")
MLP_CONFIGS = ("gelu", "mpcvit+")
