"""`python -m serve`: launch vLLM's OpenAI-compatible server for a catalog alias or model folder."""
from __future__ import annotations

import argparse

from core.cli import add_common, print_catalog
from core.errors import run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    p.add_argument("--model", help="alias (see --list), model folder or Hub id")
    p.add_argument("--list", action="store_true", help="print the variant catalog and what is local")
    add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.doctor:
        from core.doctor import report
        return report()
    if args.list:
        print_catalog()
        return 0
    parser().error("serving lands with the serve issue; try --list or --doctor")
    return 2


if __name__ == "__main__":
    run_cli(main)
