"""`mpcvit run` and `mpcvit bench` sub-commands (registered into the `mpcvit` CLI)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the runtime sub-commands to the `mpcvit` command line."""
