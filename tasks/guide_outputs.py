"""The guide stage's outputs, declared once (the way ``tasks.stages`` declares the other stages'; ``tests/
test_guide_stage.py`` checks dvc.yaml's guide entry against them), and the params of the guided classifier's re-audit.

Kept apart from ``tasks.stages`` because every stage imports that module (declaring the guide stage there would change
every stage's code hash), and apart from ``tasks.guide`` so that readers of the outputs (the report) do not import
the fine-tuning code: only ``tasks.params`` and the standard library here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detection.models.specs import ClassifierSpec
from tasks.params import Params


@dataclass(frozen=True)
class GuideOutputs:
    """The guide stage's outputs: ``out_dir`` (``data/guide``: the guided model's re-audit, ``infer/``,
    ``explain/``, ``evaluate/``, their metrics JSON and plots, plus ``training.json`` and ``heldout.parquet``), the
    guided classifier (``model``: TorchScript + ``.json`` sidecar) and the DVC metrics file."""

    out_dir: Path
    model: Path
    metrics: Path

    @property
    def sidecar(self) -> Path:
        return self.model.with_suffix(".json")

    @property
    def training(self) -> Path:
        return self.out_dir / "training.json"

    @property
    def heldout(self) -> Path:
        """One row per (held-out set, model, image, class): the probabilities behind the held-out metrics."""
        return self.out_dir / "heldout.parquet"

    def sub(self, stage: str) -> Path:
        return self.out_dir / stage

    def dvc_outs(self) -> list[Path]:
        return [self.out_dir, self.model, self.sidecar]

    def dvc_metrics(self) -> list[Path]:
        return [self.metrics]

    def dvc_plots(self) -> list[Path]:
        return []

    def audit_params(self, params: Params) -> Params:
        """``params`` for the guided model's re-audit: infer / explain / evaluate write under ``out_dir`` (metrics
        files and plots too), infer runs the detectors (explain and evaluate read their detections) and the guided
        classifier under ``guide.model_id`` without the pose model, explain runs only the ``classes`` jobs whose
        options name no trained file (:data:`tasks.params.FILE_OPTIONS`: a RExL policy trained for the original
        classifier, which its guard refuses for the guided one), or ``guide.audit_jobs``. Pull and parts are the
        audit's own. Raises ValueError when no job is left."""
        g = params.guide
        spec = guided_spec(params)
        jobs = list(g.audit_jobs) if g.audit_jobs is not None else [j for j in params.explain.jobs
                                                                     if j.targets == "classes"
                                                                     and not j.option_files()]
        if not jobs:
            raise ValueError("guide: no explain job with targets 'classes' and no trained-file option (e.g. a "
                             "policy) to re-audit the guided classifier (add one to explain.jobs or set "
                             "guide.audit_jobs)")
        infer = params.infer.model_copy(update={"out_dir": str(self.sub("infer")),
                                                "metrics": str(self.out_dir / "infer.json"),
                                                "pose": None, "classifier": spec})
        explain = params.explain.model_copy(update={"out_dir": str(self.sub("explain")),
                                                    "metrics": str(self.out_dir / "explain.json"), "jobs": jobs})
        evaluate = params.evaluate.model_copy(update={"out_dir": str(self.sub("evaluate")),
                                                      "metrics": str(self.out_dir / "evaluate.json"),
                                                      "plots_dir": str(self.out_dir / "plots")})
        return params.model_copy(update={"infer": infer, "explain": explain, "evaluate": evaluate})


def guide(params: Params) -> GuideOutputs:
    g = params.guide
    return GuideOutputs(Path(g.out_dir), Path(g.model), Path(g.metrics))


def guided_spec(params: Params) -> ClassifierSpec:
    """The guided classifier as an infer spec: a ``saved`` classifier at ``guide.model`` with ``guide.model_id``.
    Raises ValueError when the id is the original's."""
    g = params.guide
    if params.infer.classifier is not None and g.model_id == params.infer.classifier.id:
        raise ValueError(f"guide.model_id {g.model_id!r} is infer.classifier's id: the guided model needs its own")
    return ClassifierSpec(id=g.model_id, kind="saved", weights=g.model)


__all__ = ["GuideOutputs", "guide", "guided_spec"]
