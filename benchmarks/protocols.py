"""Every protocol side by side on one model: the benchmark matrix on LAN, printed as the protocol table.

    MP_SPDZ_HOME=... python -m benchmarks.protocols --models vit_7_4_32 --attention softmax mu0.1 --real \\
        --protocols semi2k dealer replicated-ring rep4-ring ps-rep-ring trio astra --results out/protocols.jsonl

Measured time, party-0 and all-party MB, rounds and the online/preprocessing split (MP-SPDZ's `-v`), with the
cost model's figures beside them (`benchmarks.report.protocol_table`). Cells already in the results file are not
measured again; without `--real` only the cost model's columns are filled. Any other option of
`benchmarks.matrix` passes through (e.g. `--timeout`).
"""
from __future__ import annotations

import argparse
import sys

from benchmarks import matrix
from benchmarks.report import load, markdown_table, protocol_table
from compiler.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.protocols", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    matrix.add_arguments(parser)
    args = parser.parse_args(argv)
    args.networks = ["lan"]

    def go() -> int:
        matrix.main_from_args(args)
        print(markdown_table(protocol_table(load(args.results))))
        return 0

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
