"""``xai-audit``: the command line. One sub-command per pipeline stage (the same flows ``dvc repro`` runs)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

import flows  # noqa: F401  (environment defaults before Prefect is imported)


def _stage(module: str, function: str):
    """A sub-command that runs ``flows.<module>.<function>(params)`` and prints its result as JSON. Flows are
    imported only when their command runs (Prefect's import is slow)."""
    def run(args: argparse.Namespace) -> int:
        result = getattr(importlib.import_module(f"flows.{module}"), function)(args.params)
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    return run


def _models(args: argparse.Namespace) -> int:
    from flows.models import MODELS, run_models

    result = run_models(args.params, tuple(args.only or MODELS))
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xai-audit", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull", help="pull a dataset version into validated Parquet tables")
    pull.set_defaults(func=_stage("pull", "run_pull"))
    sub.add_parser("train-data", help="generate the synthetic scenes the demo models train on").set_defaults(
        func=_stage("models", "run_train_data"))
    models = sub.add_parser("models", help="train the demo models (or copy the weights named in params)")
    models.add_argument("--only", action="append", choices=["pose", "detector", "classifier"],
                        help="train only this model (repeatable); default: all, in dependency order")
    models.set_defaults(func=_models)
    sub.add_parser("infer", help="run the configured models over the pulled dataset").set_defaults(
        func=_stage("infer", "run_infer"))
    sub.add_parser("parts", help="body-part masks of every pedestrian (GT persons and detections)").set_defaults(
        func=_stage("parts", "run_parts"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from detection.datasets.records import AnnotationError
    from detection.models.base import WeightsError
    from tasks.params import ParamsError

    try:
        return args.func(args)
    except (ParamsError, AnnotationError, WeightsError, FileNotFoundError) as exc:
        print(f"xai-audit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
