"""The `mlpolar` command: one entry point, one subcommand per job.

Each subcommand lives in the module of the layer it drives and exposes two functions,
``add_arguments(parser)`` and ``command(args) -> int`` (the exit status). They are imported only when chosen, so
`mlpolar --help` stays fast and a subcommand's heavy imports never slow down another.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# name -> (module, one-line help). Add a line here to add a subcommand.
SUBCOMMANDS = {
    "generate": ("mlpolar.data.generate", "sample configurations and label them with QM/MM DFT"),
    "md": ("mlpolar.workflows.md_command", "ML/MM molecular dynamics (default: the shipped example)"),
    "fe": ("mlpolar.workflows.fe_command", "MM -> ML/MM free-energy corrections on Dask"),
    "train": ("mlpolar.train.command", "train or resume a model from a YAML config"),
    "evaluate": ("mlpolar.train.evaluate", "metrics and parity plots of a model on label stores"),
    "bond-scan": ("mlpolar.train.bond_scan", "a model's bond stretch in vacuum, next to DFT"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mlpolar", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv else None
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(_module=module)
        if name == chosen:  # import only the module of the chosen subcommand
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).command(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
