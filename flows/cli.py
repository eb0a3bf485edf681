"""The ``ptychoflow`` command line.

This module is the composition root: it assembles the subcommands that each
package registers (``recon.cli``, ``flows.commands``, ``watcher.cli``,
``portal.cli``). Command
modules import only ``argparse`` at the top so ``--help`` stays fast; the heavy
imports happen inside each command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that contribute subcommands through a ``register(subparsers)`` function.
COMMAND_MODULES = ("recon.cli", "flows.commands", "watcher.cli", "portal.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptychoflow",
        description="Ptychography reconstruction from beamline scan folders to images, "
        "on Globus Flows or the embedded local backend.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # a package that adds no commands yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from recon.errors import PtychoflowError

    try:
        return int(args.handler(args) or 0)
    except PtychoflowError as err:
        from flows.terminal import printable

        print(f"ptychoflow {args.command}: error: {printable(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ptychoflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if "globus_sdk" not in sys.modules:
            raise
        from flows.globus.errors import is_network_error, network_reason

        if not is_network_error(err):
            raise
        print(
            f"ptychoflow {args.command}: error: cannot reach Globus: {network_reason(err)}; "
            "check the network and DNS, then try again",
            file=sys.stderr,
        )
        return 1


def run_flow_main(argv: Sequence[str] | None = None) -> int:
    """``run-flow ...`` is ``ptychoflow run ...``."""
    return main(["run", *(sys.argv[1:] if argv is None else argv)])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ptychoflow")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
