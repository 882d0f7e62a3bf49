"""``xai-audit``: the command line. One sub-command per pipeline stage (the same flows ``dvc repro`` runs)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import flows  # noqa: F401  (environment defaults before Prefect is imported)


def _stage(module: str, function: str):
    """A sub-command that runs ``flows.<module>.<function>(params)`` and prints its result as JSON. Flows are
    imported only when their command runs (Prefect's import is slow)."""
    def run(args: argparse.Namespace) -> int:
        result = getattr(importlib.import_module(f"flows.{module}"), function)(args.params)
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    return run


def _registry_help() -> dict[str, str]:
    """Placeholders of ``xai-audit explain --help`` filled from the explainer registry: ``<methods>`` (every
    method), ``<region-methods>`` (those that ``needs_regions``), ``<renamed>`` (old names)."""
    from explainers.registry import METHODS, RENAMED, method_names

    return {"<methods>": ", ".join(METHODS), "<region-methods>": ", ".join(method_names(needs_regions=True)),
            "<renamed>": ", ".join(f"{old} -> {new}" for old, (new, _) in RENAMED.items()) or "none"}


class _RegistryHelpFormatter(argparse.HelpFormatter):
    """Fills the registry placeholders only when help is printed: importing the explainers while the parser is built
    would make every stage's command (and its DVC deps) import them."""

    def _expand_help(self, action: argparse.Action) -> str:
        text = super()._expand_help(action)
        if "<" not in text:
            return text
        for placeholder, value in _registry_help().items():
            text = text.replace(placeholder, value)
        return text


def _models(args: argparse.Namespace) -> int:
    from flows.models import MODELS, run_models

    only = tuple(args.only or (*MODELS, "keypoints"))
    result = run_models(args.params, tuple(m for m in MODELS if m in only)) if set(only) & set(MODELS) else {}
    if "keypoints" in only:
        from flows.keypoints import run_keypoints

        result["keypoints"] = run_keypoints(args.params)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _explain(args: argparse.Namespace) -> int:
    if args.image is None:                           # the pipeline stage over the whole dataset
        return _stage("explain", "run_explain")(args)
    from flows.single import explain_file

    result = explain_file(args.image, args.model, args.method, args.budget, args.regions, args.n_regions, args.out,
                          args.seed, args.params)
    print(json.dumps(result, indent=2))
    return 0


def default_stages(params_file: str) -> list[str]:
    """The stages ``audit`` / ``serve`` run without ``--stage``: all of them, except ``models`` when no model in
    ``infer`` (weights or keypoint model) is a file the models stage writes - models you bring (``kind: callable``,
    your own .pt) would otherwise wait ~25 CPU minutes for demo models nobody uses - ``guide`` where it cannot
    run (:func:`guide_applies`), ``rexl`` where no explain job uses its policies (:func:`rexl_applies`) and
    ``fastshap`` where no explain job uses its weights file (:func:`fastshap_applies`)."""
    from flows.audit import STAGES

    from tasks.keypoints import KEYPOINTS_FILE
    from tasks.models import MODEL_FILES
    from tasks.params import load_params

    params = load_params(params_file, check_files=False)
    out = Path(params.models.out_dir)
    written = {(out / name).resolve() for name in [*MODEL_FILES.values(), KEYPOINTS_FILE]}
    specs = [s for s in (*params.infer.detectors, params.infer.pose, params.infer.classifier) if s is not None]
    used = [Path(f).resolve() for s in specs for f in (s.weights, getattr(s, "keypoints", None)) if f]
    stages = list(STAGES) if written & set(used) else [s for s in STAGES if s != "models"]
    stages = stages if guide_applies(params, stages) else [s for s in stages if s != "guide"]
    stages = stages if rexl_applies(params) else [s for s in stages if s != "rexl"]
    return stages if fastshap_applies(params) else [s for s in stages if s != "fastshap"]


def rexl_applies(params) -> bool:
    """The RExL policy stage (``rexl``) runs by default only where an explain job reads a policy it writes
    (``rexl.out_dir``): training one nobody uses costs minutes per model."""
    written = {params.rexl.policy_file(n) for n in params.rexl.policies()}
    return any(Path(str(job.options["policy"])).resolve() in written for job in params.explain.jobs
               if "policy" in job.options)


def fastshap_applies(params) -> bool:
    """The FastSHAP weights stage (``fastshap``) runs by default only where an explain job's ``options.weights``
    names a file it writes (:meth:`~tasks.params.FastShapParams.written_files`): training a network nobody uses
    costs CPU minutes."""
    from tasks.params import weights_read_by_jobs

    return bool(set(params.fastshap.written_files()) & weights_read_by_jobs(params))


def guide_applies(params, stages: list[str]) -> bool:
    """The guide stage runs by default only where it can: the classifier is the models stage's scene classifier
    (a SceneNet it can fine-tune, trained on the models stage's training scenes, which are in this run) and the
    source is the synthetic generator with a spurious cue (its held-out probe and decorrelated set)."""
    from tasks.models import MODEL_FILES

    clf = params.infer.classifier
    ours = (Path(params.models.out_dir) / MODEL_FILES["classifier"]).resolve()
    return ("models" in stages and clf is not None and clf.kind == "saved" and Path(clf.weights).resolve() == ours
            and params.pull.source == "synthetic" and params.pull.synthetic.spurious is not None)


def _stages(args: argparse.Namespace) -> list[str]:
    if args.stages:
        return args.stages
    stages = default_stages(args.params)
    if "models" not in stages:
        print(f"xai-audit {args.command}: skipping the models stage (no model in infer comes from it; "
              f"--stage models runs it); stages: {' '.join(stages)}", file=sys.stderr)
    return stages


def _audit(args: argparse.Namespace) -> int:
    from flows.audit import audit_flow

    result = audit_flow(args.params, _stages(args))
    print(json.dumps({k: v for k, v in result.items() if k in ("explain", "evaluate", "guide", "report")}, indent=2,
                     sort_keys=True, default=str))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from flows.audit import serve

    if (args.cron is None) == (args.interval is None):
        raise SystemExit("xai-audit serve: give exactly one of --cron or --interval")
    serve(args.params, args.cron, args.interval, _stages(args), args.name, args.port)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from flows.compare import run_compare

    return run_compare(args)


def _compare_arguments(compare: argparse.ArgumentParser) -> None:
    """``compare``'s arguments, here rather than imported from flows.compare: every stage's command builds this
    parser, and what it imports is that stage's DVC code dependency (tasks.stage_deps). tests/test_compare.py checks
    that they are ``flows.compare.add_arguments``' own."""
    compare.add_argument("a", help="audit A (the reference): a run directory, 'workspace', a git revision or a DVC "
                                   "experiment")
    compare.add_argument("b", help="audit B (the candidate), likewise")
    compare.add_argument("--repo", default=".", help="the git + DVC repository revisions are read from (default: .)")
    compare.add_argument("--html", default="report/compare.html", help="HTML report (default: report/compare.html)")
    compare.add_argument("--json", dest="json_out", help="write the comparison as JSON here")
    compare.add_argument("--fail-on", dest="fail_on", action="append", default=[], metavar="NAME=VALUE",
                         help="a release threshold (repeatable, each NAME once): part_shift=ci|X, cue_reliance_up=X, "
                              "ap_drop=X, mr2_up=X, quality_drop=X, new_misses=N, sanity=regress|fail; exit 1 when "
                              "one fails (README: Compare two audits)")
    compare.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: the report's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xai-audit", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    # --params after the sub-command too (`xai-audit audit --params my.yaml`); SUPPRESS: absent, it leaves the
    # top-level value alone
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default=argparse.SUPPRESS, help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    pull = command("pull", help="pull a dataset version into validated Parquet tables")
    pull.set_defaults(func=_stage("pull", "run_pull"))
    command("train-data", help="generate the synthetic scenes the demo models train on").set_defaults(
        func=_stage("models", "run_train_data"))
    models = command("models", help="train the demo models (or copy the weights named in params)")
    models.add_argument("--only", action="append", choices=["pose", "detector", "classifier", "keypoints"],
                        help="train only this model (repeatable); default: all, in dependency order")
    models.set_defaults(func=_models)
    command("infer", help="run the configured models over the pulled dataset").set_defaults(
        func=_stage("infer", "run_infer"))
    command("parts", help="body-part masks of every pedestrian (GT persons and detections)").set_defaults(
        func=_stage("parts", "run_parts"))
    explain = command("explain", help="without IMAGE: the explain stage over the dataset; with IMAGE: explain "
                                      "that image and write its overlay", formatter_class=_RegistryHelpFormatter)
    explain.add_argument("image", nargs="?", help="an image file to explain on its own")
    explain.add_argument("--model", help="a model id from params (detector or classifier) or a YOLO .pt / .yaml "
                                         "(default: the explain stage's detector)")
    explain.add_argument("--method", default="drise", help="explainer: one of <methods> (default drise; rise for a "
                                                           "classifier; renamed: <renamed>)")
    explain.add_argument("--budget", type=int, help="forward passes (default: the method's)")
    explain.add_argument("--regions", choices=["none", "superpixels", "grid", "parts"], default="none",
                         help="players of region methods (<region-methods>; with none, each plays on its own "
                              "default); parts: every pedestrian over its body parts (keypoints from infer.pose, "
                              "else the template; per-part tables on stderr)")
    explain.add_argument("--n-regions", type=int, default=24)
    explain.add_argument("--seed", type=int, default=0)
    explain.add_argument("--out", help="overlay PNG (default: <image>_<method>.png beside the image)")
    explain.set_defaults(func=_explain)
    command("evaluate", help="metrics of every explanation, DVC metrics and plots").set_defaults(
        func=_stage("evaluate", "run_evaluate"))
    command("guide", help="fine-tune the classifier with model guidance (energy loss), re-audit it, compare on "
                          "held-out scenes").set_defaults(func=_stage("guide", "run_guide"))
    command("rexl", help="the RExL policies (a learned explainer) of the audited models: train, or verify and "
                         "copy the given ones (params rexl)").set_defaults(func=_stage("rexl", "run_rexl"))
    command("fastshap", help="the FastSHAP networks (learned explainers) of the explain detector's body-part game "
                             "and of the classifier's grid-cell game: train, or verify and copy the given ones "
                             "(params fastshap)").set_defaults(
        func=_stage("fastshap", "run_fastshap"))
    command("report", help="the HTML audit report and markdown summary").set_defaults(
        func=_stage("report", "run_report"))
    stages_help = ("run only these stages (repeatable): pull models rexl fastshap infer parts explain evaluate "
                   "guide report; default all, without models when no model in infer comes from it, without guide "
                   "where it cannot run, without rexl where no explain job reads a policy it writes, without "
                   "fastshap where no explain job reads the weights it writes")
    audit = command("audit", help="every stage as one Prefect flow (what `dvc repro` runs, unconditionally)")
    audit.add_argument("--stage", dest="stages", action="append", help=stages_help)
    audit.set_defaults(func=_audit)
    serve = command("serve", help="serve the audit flow on a schedule (starts a Prefect server unless "
                                  "PREFECT_API_URL is set)")
    serve.add_argument("--cron", help='cron schedule, e.g. "0 3 * * *"')
    serve.add_argument("--interval", type=float, help="or: every N seconds")
    serve.add_argument("--stage", dest="stages", action="append", help=stages_help)
    serve.add_argument("--name", default="xai-audit", help="deployment name")
    serve.add_argument("--port", type=int, default=4200, help="port of the server started here")
    serve.set_defaults(func=_serve)
    compare = command("compare", help="compare two audits A -> B (run directories, git revisions or DVC "
                                      "experiments): HTML + JSON; --fail-on thresholds exit 1 (a release gate)")
    _compare_arguments(compare)
    compare.set_defaults(func=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from detection.datasets.records import AnnotationError
    from detection.models.base import WeightsError
    from tasks.params import ParamsError

    try:
        return args.func(args)
    except (ParamsError, AnnotationError, WeightsError, FileNotFoundError, ValueError) as exc:
        print(f"xai-audit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
