"""``xai-audit compare A B``: compare two audits and gate a release on the result (``tasks.compare``).

A and B are each a **run directory** (a checkout or workspace with ``params.yaml``, the stages' ``data/`` outputs
and ``metrics/``, as ``dvc repro`` leaves it) or a **git revision / DVC experiment** of the repository ``--repo``
(default: the current directory): its files are read at that revision through DVC (``dvc.api.DVCFileSystem``:
git-tracked files from the commit, DVC-tracked outputs from the local DVC cache), into a temporary folder. An
argument that is an existing directory is a run directory; ``workspace`` is ``--repo`` itself.

Writes ``--html`` (default ``report/compare.html``) and, with ``--json PATH``, the comparison as JSON; prints a
one-line verdict per gate. Exit code: 0 when every ``--fail-on`` threshold holds, 1 when one fails (the reasons
printed), 2 on a usage error (an unknown threshold, a missing run directory or input; the message names it).

No Prefect: the comparison reads finished outputs. Heavy imports happen inside :func:`run_compare`, so building the
command line parser stays cheap."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import fields, replace
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

DEFAULT_HTML = "report/compare.html"
WORKSPACE = "workspace"
FAIL_ON_HELP = ("a release threshold (repeatable, each NAME once): part_shift=ci|X (a part's overall mean share moved, "
                "its simultaneous interval excluding 0 [and |shift| > X]), cue_reliance_up=X, ap_drop=X, mr2_up=X, "
                "quality_drop=X, new_misses=N, sanity=regress|fail; exit 1 when one fails (tasks.compare.GATES)")
EXPLANATION_COLUMNS = ["image_id", "target_id", "kind", "job", "method", "regions", "region_names", "relevance"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``compare`` sub-command's arguments (``flows.cli`` adds them to its sub-parser)."""
    parser.add_argument("a", help="audit A (the reference): a run directory, a git revision or a DVC experiment")
    parser.add_argument("b", help="audit B (the candidate), likewise")
    parser.add_argument("--repo", default=".", help="the git + DVC repository revisions are read from (default: .)")
    parser.add_argument("--html", default=DEFAULT_HTML, help=f"HTML report (default: {DEFAULT_HTML})")
    parser.add_argument("--json", dest="json_out", help="write the comparison as JSON here")
    parser.add_argument("--fail-on", dest="fail_on", action="append", default=[], metavar="NAME=VALUE",
                        help=FAIL_ON_HELP)
    parser.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: the report's)")
    return parser


# ---------------------------------------------------------------------------------------------------- loading
def _rebased(outputs, root: Path):
    """A stage's outputs (``tasks.stages``) with its relative paths under ``root``."""
    return replace(outputs, **{f.name: root / getattr(outputs, f.name) for f in fields(outputs)
                               if isinstance(getattr(outputs, f.name), Path)})


def load_audit(root: str | Path, label: str | None = None):
    """An audit (``tasks.compare.Audit``) from a run directory. Raises ``CompareError`` naming the directory and
    every missing input (params.yaml, the explain targets / explanations, the infer and evaluate metrics files)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from tasks import stages
    from tasks.compare import Audit, CompareError
    from tasks.params import ParamsError, load_params

    root = Path(root)
    label = label or str(root)
    if not root.is_dir():
        raise CompareError(f"audit {label}: {root} is not a directory (nor a revision of the repository)")
    try:
        params = load_params(root / "params.yaml", check_files=False)
    except ParamsError as exc:
        raise CompareError(f"audit {label}: {exc}") from None
    explain, evaluate = _rebased(stages.explain(params), root), _rebased(stages.evaluate(params), root)
    infer, pull = _rebased(stages.infer(params), root), _rebased(stages.pull(params), root)
    needed = {explain.path("targets"): "the explain stage's targets", _explanations_dir(explain):
              "the explain stage's explanations", infer.metrics: "infer's metrics", evaluate.metrics:
              "evaluate's metrics"}
    missing = [f"{p.relative_to(root) if p.is_relative_to(root) else p} ({what})" for p, what in needed.items()
               if not p.exists()]
    if missing:
        raise CompareError(f"audit {label}: missing {'; '.join(missing)} - run the pipeline there (dvc repro), or "
                           f"`dvc pull` / `dvc checkout` those outputs")
    explanations = _read_explanations(explain)
    images = (pq.read_table(pull.path("images"), columns=["image_id", "sha256"]).to_pandas()
              if pull.path("images").is_file() else pd.DataFrame(columns=["image_id", "sha256"]))
    plot = root / params.evaluate.plots_dir / "part_relevance.csv"
    spec = params.explain_detector()
    return Audit(label=label, images=images, targets=explain.read("targets").to_pandas(), explanations=explanations,
                 metric_files={str(params.infer.metrics): _json(infer.metrics, label),
                               str(params.evaluate.metrics): _json(evaluate.metrics, label)},
                 infer_file=str(params.infer.metrics), evaluate_file=str(params.evaluate.metrics),
                 detector_id=spec.id, classifier_id=None if params.infer.classifier is None else
                 params.infer.classifier.id, part_plot=pd.read_csv(plot) if plot.is_file() else None)


def _explanations_dir(explain) -> Path:
    """The folder of the explain stage's explanation shards (the first part of its declared glob)."""
    return explain.out_dir / Path(explain.TABLES["explanations"]).parts[0]


def _read_explanations(explain):
    """The explain stage's explanation shards (its declared glob, ``tasks.stages.ExplainOutputs``), only the
    columns the comparison reads (no saliency)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from detection.datasets.tables import SCHEMAS

    schema = pa.schema([SCHEMAS["explanations"].field(c) for c in EXPLANATION_COLUMNS])
    files = sorted(explain.out_dir.glob(explain.TABLES["explanations"]))
    tables = [pq.read_table(f, columns=EXPLANATION_COLUMNS).cast(schema) for f in files]
    return (pa.concat_tables(tables) if tables else schema.empty_table()).to_pandas()


def _json(path: Path, label: str) -> dict:
    from tasks.compare import CompareError

    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CompareError(f"audit {label}: {path} is not valid JSON ({exc})") from None


def materialise(repo: str | Path, rev: str, dest: Path) -> Path:
    """Copy what the comparison reads of revision (or DVC experiment) ``rev`` of ``repo`` into ``dest`` (a run
    directory layout) through ``dvc.api.DVCFileSystem``: params.yaml, the explain targets and explanations, the
    pulled images table (optional), the infer / evaluate metrics files and plots/part_relevance.csv (optional).
    Raises ``CompareError`` naming the revision and each missing path (not in git at that commit, or a DVC output
    whose data the local cache lacks)."""
    from dvc.api import DVCFileSystem
    from dvc.repo import Repo
    from dvc.scm import RevError, resolve_rev

    from tasks import stages
    from tasks.compare import CompareError
    from tasks.params import ParamsError, load_params

    try:
        with Repo(str(repo)) as r:
            sha = resolve_rev(r.scm, rev)
    except RevError as exc:
        raise CompareError(f"audit {rev}: not a directory, and not a git revision or DVC experiment of {repo} "
                           f"({exc})") from None
    except Exception as exc:  # noqa: BLE001 - dvc raises its own types for a folder that is no DVC repository
        raise CompareError(f"audit {rev}: not a directory, and {repo} is not a git + DVC repository to read "
                           f"revisions from ({type(exc).__name__}: {exc})") from None
    fs = DVCFileSystem(repo=str(repo), rev=sha)
    _fetch(fs, "params.yaml", dest, rev, sha)
    try:
        params = load_params(dest / "params.yaml", check_files=False)
    except ParamsError as exc:
        raise CompareError(f"audit {rev}: {exc}") from None
    explain, evaluate, pull = stages.explain(params), stages.evaluate(params), stages.pull(params)
    missing = [path for path in (explain.path("targets"), _explanations_dir(explain), params.infer.metrics,
                                 evaluate.metrics) if not _fetch(fs, Path(path).as_posix(), dest, rev, sha, False)]
    for optional in (pull.path("images"), Path(params.evaluate.plots_dir) / "part_relevance.csv"):
        _fetch(fs, optional.as_posix(), dest, rev, sha, False)
    if missing:
        raise CompareError(f"audit {rev} ({sha[:10]}): missing {', '.join(map(str, missing))} at that revision "
                           f"(not committed, not a DVC output there, or its data not in the local DVC cache: "
                           f"`dvc fetch --rev {rev}` / `dvc pull`)")
    return dest


def _fetch(fs, path: str, dest: Path, rev: str, sha: str, required: bool = True) -> bool:
    """Copy ``path`` (file or folder) at the revision into ``dest``; False when it is not there (raises
    ``CompareError`` instead when ``required``)."""
    from tasks.compare import CompareError

    try:
        if not fs.exists(path):
            raise FileNotFoundError(path)
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if fs.isdir(path):
            fs.get(path, str(target), recursive=True)
        else:
            fs.get_file(path, str(target))
        return True
    except Exception as exc:  # noqa: BLE001 - a missing cache object surfaces as several dvc / fsspec types
        if required:
            raise CompareError(f"audit {rev} ({sha[:10]}): cannot read {path} at that revision "
                               f"({type(exc).__name__}: {exc})") from None
        return False


def resolve(spec: str, repo: str | Path, scratch: Path):
    """The audit named ``spec``: a run directory, ``workspace`` (the repository itself) or a revision."""
    if spec == WORKSPACE:
        return load_audit(repo, spec)
    if Path(spec).is_dir():
        return load_audit(spec, spec)
    folder = scratch / f"rev-{len(list(scratch.iterdir()))}"
    folder.mkdir()
    return load_audit(materialise(repo, spec, folder), spec)


# ---------------------------------------------------------------------------------------------------- command
def run_compare(args: argparse.Namespace) -> int:
    """Compare ``args.a`` and ``args.b``, write the HTML (``args.html``) and JSON (``args.json_out``), print each
    gate's verdict; returns the exit code (0 / 1). Raises ``CompareError`` (a ``ValueError``: the CLI prints it and
    exits 2) for an unknown threshold or a missing audit input."""
    from tasks.compare import SEED, compare, parse_gates
    from tasks.report_compare import compare_page
    from tasks.shards import write_text_atomic

    gates = parse_gates(args.fail_on)                # usage errors before any loading
    with tempfile.TemporaryDirectory(prefix="xai-compare-") as scratch:
        a = resolve(args.a, args.repo, Path(scratch))
        b = resolve(args.b, args.repo, Path(scratch))
    result = compare(a, b, gates, seed=SEED if args.seed is None else args.seed)
    write_text_atomic(args.html, compare_page(result))
    if args.json_out:
        write_text_atomic(args.json_out, json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    for warning in result.warnings:
        print(f"xai-audit compare: warning: {warning}", file=sys.stderr)
    for g in result.gates:
        print(f"{'FAIL' if g.failed else 'ok  '} {g.gate.spec}")
        for reason in g.reasons:
            print(f"     {reason}")
    print(f"xai-audit compare: {args.a} -> {args.b}: {args.html}"
          + (f", {args.json_out}" if args.json_out else "")
          + (f"; {len(result.failed)} of {len(result.gates)} thresholds failed" if result.gates else ""))
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.compare A B ...``: as ``xai-audit compare`` (exit 2 with the message on a usage error)."""
    from tasks.compare import CompareError

    parser = add_arguments(argparse.ArgumentParser(prog="xai-audit compare", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return run_compare(args)
    except CompareError as exc:
        print(f"xai-audit compare: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
