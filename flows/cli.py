"""``xai-audit``: the command line. One sub-command per pipeline stage (the same flows ``dvc repro`` runs)."""
from __future__ import annotations

import argparse
import json
import sys

import flows  # noqa: F401  (environment defaults before Prefect is imported)


def _pull(args: argparse.Namespace) -> int:
    from flows.pull import run_pull

    stats = run_pull(args.params)
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xai-audit", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull", help="pull a dataset version into validated Parquet tables")
    pull.set_defaults(func=_pull)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from detection.datasets.records import AnnotationError
    from tasks.params import ParamsError

    try:
        return args.func(args)
    except (ParamsError, AnnotationError, FileNotFoundError) as exc:
        print(f"xai-audit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
