"""The report stage: a self-contained HTML audit report and a markdown summary from the explain / evaluate tables,
also published as Prefect artifacts (markdown summary + tables) of the run."""
from __future__ import annotations

from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import stages
from tasks.params import Params, load_params
from tasks.report import ReportInputs, build_report, cost_table, load_json, quality_table, undefined_table
from tasks.report_guidance import load_guidance
from tasks.shards import write_text_atomic


def load_inputs(params: Params) -> ReportInputs:
    """The report's tables. ``ground_truth``: the pulled annotations have a box of the audited detector's person
    class (a folder of photos has none: the report then says that detection quality is not measured)."""
    explained, evaluated = stages.explain(params), stages.evaluate(params)
    errors = pa.concat_tables([explained.read("errors"), evaluated.read("errors")])
    data = stages.pull(params).dataset()
    spec = params.explain_detector()
    detections = stages.infer(params).read("detections").select(["model_id", "image_id", "det_id", "category",
                                                                 "score", "above_conf", "bbox"])
    detections = detections.filter(pc.and_(pc.equal(detections["model_id"], spec.id),
                                           pc.equal(detections["category"], spec.person_class)))
    parts = stages.parts(params).read("parts").select(["model_id", "det_id", "source"])
    return ReportInputs(
        images=data.images.to_pandas(),
        targets=explained.read("targets").to_pandas(),
        explanations=explained.read("explanations").to_pandas(),
        metrics=evaluated.read("metrics").to_pandas(),
        infer_metrics=load_json(stages.infer(params).metrics),
        explain_params=params.explain.model_dump(mode="json"),
        evaluate_summary=load_json(evaluated.metrics),
        errors=errors.to_pandas(),
        detector_id=params.explain_detector().id,
        classifier_id=None if params.infer.classifier is None else params.infer.classifier.id,
        ground_truth=bool(pc.any(pc.equal(data.annotations["category"], spec.person_class)).as_py()),
        detections=detections.to_pandas(),
        part_sources=parts.group_by(["model_id", "det_id", "source"]).aggregate([]).to_pandas(),
        slices=_optional(evaluated, "slices"), misses=_optional(evaluated, "misses"),
        sag=_optional(explained, "sag"), guidance=load_guidance(params))


def _optional(outputs: stages.StageOutputs, name: str):
    """A table as pandas, or None when the stage's output predates it (the report then leaves its section out)."""
    try:
        return outputs.read(name).to_pandas()
    except FileNotFoundError:
        return None


@flow(name="report", log_prints=True)
def report_flow(params: Params) -> dict:
    logger = get_run_logger()
    inputs = load_inputs(params)
    page, summary = build_report(inputs, params.report.gallery)
    html_path = write_text_atomic(params.report.out, page)
    write_text_atomic(params.report.summary, summary)
    create_markdown_artifact(key="xai-audit-summary", markdown=summary, description="xai-audit summary")
    for key, table in (("xai-audit-quality", quality_table(inputs.metrics)),
                       ("xai-audit-undefined", undefined_table(inputs.metrics)),
                       ("xai-audit-cost", cost_table(inputs.explanations, inputs.explanation_options()))):
        create_table_artifact(key=key, table=table.round(4).astype(object).where(table.notna(), None)
                              .to_dict(orient="records"), description=key)
    logger.info("report: %s (%.0f kB)", html_path, html_path.stat().st_size / 1024)
    return {"report": str(html_path), "summary": params.report.summary, "bytes": html_path.stat().st_size}


def run_report(params_file: str | Path = "params.yaml") -> dict:
    return report_flow(load_params(params_file))
