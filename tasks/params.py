"""params.yaml, validated by a typed schema: each stage reads its own section.

An unknown key, a wrong type or a missing input file is a :class:`ParamsError` whose message names the file,
the key (dotted path) and the value at fault.

The file is read the way DVC reads it (ruamel.yaml, YAML 1.2, :func:`read_yaml`): ``1e-2`` is a float, ``yes`` /
``on`` are strings, ``1:30`` is a string, ``010`` is ten, and a duplicated key is an error. PyYAML (YAML 1.1) reads
each of these differently, so the stages and ``dvc params diff`` would otherwise disagree about the same file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_serializer,
    model_validator,
)

from detection.datasets.imageio import ImageLimits
from detection.datasets.synthetic import SyntheticConfig
from detection.models.specs import ClassifierSpec, DetectorSpec


class ParamsError(ValueError):
    """Invalid parameters; the message names file, key and value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CocoSource(_Section):
    annotations: str                    # COCO JSON
    images_dir: str                     # folder the JSON's file_name entries are relative to
    split: str = "val"


class YoloSource(_Section):
    data: str                           # ultralytics data yaml
    splits: tuple[str, ...] = ("train", "val")


class FolderSource(_Section):
    images_dir: str
    split: str = "test"


class DvcSource(_Section):
    """Fetch a DVC-tracked path of a (git) repository at a fixed revision before reading it (``dvc get``)."""

    url: str                            # git URL or local path of a DVC repository
    path: str                           # path inside it
    rev: str | None = None              # tag / branch / commit: the dataset version
    remote: str | None = None           # DVC remote name in that repository (default: its default remote)


class PullParams(_Section):
    source: Literal["synthetic", "coco", "yolo", "folder"] = "synthetic"
    out_dir: str = "data/pulled"
    metrics: str = "metrics/pull.json"
    shard_size: int = Field(default=32, ge=1)
    limits: ImageLimits = ImageLimits()
    synthetic: SyntheticConfig = SyntheticConfig()
    coco: CocoSource | None = None
    yolo: YoloSource | None = None
    folder: FolderSource | None = None
    # With dvc set, the coco/yolo/folder paths are relative to the fetched folder.
    dvc: DvcSource | None = None
    # The user's per-object attribute tables (.parquet / .csv keyed by image_id, ann_id; detection.attributes)
    attributes: list[str] = []

    @model_validator(mode="after")
    def _source_section_present(self) -> PullParams:
        if self.source != "synthetic" and getattr(self, self.source) is None:
            raise ValueError(f"source is {self.source!r} but the section pull.{self.source} is missing")
        if self.dvc is not None and self.source == "synthetic":
            raise ValueError("pull.dvc fetches files for a coco/yolo/folder source, not for 'synthetic'")
        return self

    def input_paths(self) -> list[tuple[str, str]]:
        """(dotted key, path) of every input file the chosen source names, and of the user's attribute tables,
        for existence checks."""
        user = [(f"pull.attributes[{i}]", p) for i, p in enumerate(self.attributes)]
        if self.source == "synthetic" or self.dvc is not None:
            return user
        section = getattr(self, self.source)
        keys = {"coco": ("annotations", "images_dir"), "yolo": ("data",), "folder": ("images_dir",)}[self.source]
        return [(f"pull.{self.source}.{k}", getattr(section, k)) for k in keys] + user


class TrainDataParams(_Section):
    """Synthetic scenes the demo models train on: same generator as pull.synthetic, another seed, no val split."""

    n_images: int = Field(default=960, ge=1)
    seed_offset: int = 1                        # generator seed = seed + seed_offset (the audited data use seed)
    out_dir: str = "data/train"
    metrics: str = "metrics/train_data.json"


# what a learned component's training record says it trained on (the scenes of TrainDataParams' generator)
TRAINING_DATA = "training scenes (pull.synthetic, seed + models.train_data.seed_offset)"


class YoloTrainParams(_Section):
    weights: str | None = None                  # a local .pt to use instead of training
    arch: str = "detection/configs/yolo-pose-tiny.yaml"
    epochs: int = Field(default=10, ge=1)
    imgsz: int = Field(default=320, ge=32)
    batch: int = Field(default=16, ge=1)
    lr0: float = Field(default=0.006, gt=0)


class DetectorTrainParams(YoloTrainParams):
    arch: str = "detection/configs/yolo-person-tiny.yaml"
    epochs: int = Field(default=3, ge=1)
    lr0: float = Field(default=0.003, gt=0)
    # Start from the trained pose model: its backbone, neck and box head transfer (Pose extends Detect), so a few
    # epochs give a better detector than training it from scratch in the same time.
    init_from_pose: bool = True


class ClassifierTrainParams(_Section):
    weights: str | None = None                  # a saved classifier (TorchScript + .json) to use instead
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    input_size: tuple[int, int] = (240, 320)     # (H, W)
    width: int = Field(default=16, ge=4)


class KeypointTrainParams(_Section):
    """The top-down keypoint model (``detection.models.keypoints``) that places the pose model's keypoints."""

    weights: str | None = None                  # a saved keypoint model (.pt) to use instead of training
    epochs: int = Field(default=60, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    crop_size: tuple[int, int] = (64, 32)       # (H, W) of the person crop; heatmaps are half of it
    width: int = Field(default=16, ge=4)
    context: bool = False                       # global-context term in the network (detection.models.keypoints)


class ModelsParams(_Section):
    out_dir: str = "models"
    metrics_dir: str = "metrics/models"
    work_dir: str = ".work/models"              # ultralytics run folders (not an output)
    train_data: TrainDataParams = TrainDataParams()
    pose: YoloTrainParams = YoloTrainParams()
    detector: DetectorTrainParams = DetectorTrainParams()
    classifier: ClassifierTrainParams = ClassifierTrainParams()
    keypoints: KeypointTrainParams = KeypointTrainParams()


class ReasonableSubset(_Section):
    """Persons an evaluation counts in its 'reasonable' figures (CityPersons-style); the rest are ignore regions."""

    min_height: float = 40.0
    max_occlusion: float = 0.35


class InferParams(_Section):
    out_dir: str = "data/infer"
    metrics: str = "metrics/infer.json"
    shard_size: int = Field(default=64, ge=1)   # images per Prefect task
    batch_size: int = Field(default=32, ge=1)   # images per forward pass
    device: str = "auto"
    detectors: list[DetectorSpec] = [DetectorSpec(id="demo-yolo", weights="models/detector.pt")]
    pose: DetectorSpec | None = DetectorSpec(id="demo-pose", weights="models/pose.pt",
                                             keypoints="models/keypoints.pt")
    classifier: ClassifierSpec | None = ClassifierSpec(id="demo-scene", weights="models/classifier.pt")
    reasonable: ReasonableSubset = ReasonableSubset()

    @model_validator(mode="after")
    def _unique_ids(self) -> InferParams:
        ids = [d.id for d in self.detectors] + [m.id for m in (self.pose, self.classifier) if m is not None]
        if len(ids) != len(set(ids)):
            raise ValueError(f"model ids must be unique, got {ids}")
        return self


class PartsParams(_Section):
    """Body-part masks of every pedestrian: ground-truth persons and the configured detectors' person detections."""

    out_dir: str = "data/parts"
    metrics: str = "metrics/parts.json"
    shard_size: int = Field(default=64, ge=1)          # images per Prefect task
    grouping: Literal["parts10", "parts6", "parts4"] = "parts10"
    context: bool = True                               # add the box-minus-body player
    detectors: list[str] | None = None                 # ids from infer.detectors; null: all of them
    match_iou: float = Field(default=0.5, gt=0, le=1)  # box IoU that ties a detection to a GT person / pose box
    keypoint_conf: float = Field(default=0.5, ge=0, le=1)   # pose keypoints at least this confident are used
    min_keypoints: int = Field(default=3, ge=1, le=17)      # fewer usable keypoints: next source


FILE_OPTIONS = ("policy", "weights")   # explain job options naming a file the results depend on (rexl's policy,
                                      # fastshap's weights)


def job_name(job: dict) -> str:
    """The name of an explain job given as a dict (its params, or a dump of :class:`ExplainJob` as the report reads
    it): its ``label`` (else its ``method``), then ``@<regions>`` unless the regions are ``none``."""
    head = job.get("label") or job["method"]
    regions = job.get("regions", "parts")
    return head if regions == "none" else f"{head}@{regions}"


class ExplainJob(_Section):
    """One explainer run on one kind of target: ``persons`` (ground-truth pedestrians, scored by the detector's
    D-RISE similarity to their box, so missed ones are explained too), ``detections`` (the detector's own person
    detections) or ``classes`` (the classifier's classes, every image). ``method``, ``options`` and what the method
    class declares it needs (regions, detections) are checked against the explainers by
    :func:`tasks.explain_jobs.check_jobs` (the explain / audit flows, ``make run``), not here: every stage imports
    this module, and only the explain stage should depend on the explainers' code."""

    method: str                                         # a name of explainers.registry.METHODS (tasks.explain_jobs)
    targets: Literal["persons", "detections", "classes"]
    budget: int | None = Field(default=None, ge=1)      # forward passes per explanation; null: the method's default
    regions: Literal["parts", "superpixels", "grid", "none"] = "parts"
    n_regions: int = Field(default=16, ge=2)            # superpixels / grid cells (rows x cols ~ n_regions)
    split: str | None = None                            # only images of this split; null: every image
    options: dict[str, bool | int | float | str] = {}   # method options, e.g. {grid: 8, p: 0.5, center: true}
    label: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]+$")   # the job's name in place of the
    # method's, for two jobs of one method on the same targets and regions (e.g. a RExL deletion and insertion policy)

    @model_validator(mode="after")
    def _consistent(self) -> ExplainJob:
        if self.regions == "parts" and self.targets == "classes":
            raise ValueError("regions 'parts' are pedestrians' body parts: use them with persons / detections")
        return self

    @property
    def name(self) -> str:
        """The job's name in tables, result stores and the report, e.g. ``bayes_shapley@parts``: its ``label`` (else
        its method), then ``@<regions>`` unless the regions are ``none``."""
        return job_name({"label": self.label, "method": self.method, "regions": self.regions})

    def option_files(self) -> dict[str, str | None]:
        """SHA-256 (hex) of the file each of the job's :data:`FILE_OPTIONS` names (None for a file that does not
        exist); {} for a job without such an option."""
        out = {}
        for key in FILE_OPTIONS:
            value = self.options.get(key)
            if isinstance(value, str):
                path = Path(value)
                out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return out

    @model_serializer(mode="wrap")
    def _dump_with_file_digests(self, handler):
        """A job's dump carries ``option_files_sha256`` (:meth:`option_files`) when its options name files, so that
        everything keyed by the dump -- the explain stage's config hash, the result store's job base
        (``tasks.explain.job_bases``) -- changes with the bytes of such a file, not only with its path. Jobs without
        file options dump exactly their fields (``label`` only where one is set)."""
        data = handler(self)
        if data.get("label", "") is None:         # unlabelled jobs dump as before labels existed (same stored keys)
            del data["label"]
        files = self.option_files()
        if files:
            data["option_files_sha256"] = files
        return data


class RunnerParams(_Section):
    """Where a stage's shard tasks run: threads in this process, or Dask (prefect-dask): a LocalCluster with one
    single-threaded worker per GPU (each pinned to its GPU; ``workers`` CPU workers without GPUs), or the scheduler
    at ``address`` (an existing cluster)."""

    kind: Literal["threads", "dask"] = "threads"
    workers: int | None = Field(default=None, ge=1)     # null: the top-level `workers` (threads) / one per GPU
    address: str | None = None                          # tcp://host:8786 of a running Dask scheduler


class ExplainParams(_Section):
    out_dir: str = "data/explain"
    metrics: str = "metrics/explain.json"
    shard_size: int = Field(default=8, ge=1)            # images per task (a shard is written atomically)
    device: str = "auto"
    chunk_size: int = Field(default=16, ge=1)           # images per forward pass
    saliency_size: tuple[int, int] = (48, 64)           # stored saliency grid (rows, cols), float16
    detector: str | None = None                         # id from infer.detectors; null: the first
    min_height: float = Field(default=30.0, ge=0)       # shorter pedestrians are not explained (parts too small)
    cache_dir: str | None = ".cache/xai-audit"         # result store of incremental re-audits (tasks.result_store)
    runner: RunnerParams = RunnerParams()
    jobs: list[ExplainJob] = []


class SanityParams(_Section):
    """Adebayo et al.'s cascading model-parameter randomisation of every explain job (explainers.sanity)."""

    targets: int = Field(default=12, ge=0)              # first targets (image, target order) per job; 0: off
    max_targets: int = Field(default=40, ge=0)          # a job left unsettled by them: its first max_targets
    steps: int = Field(default=3, ge=1)                 # cumulative randomisation stages, top layers first
    max_correlation: float = Field(default=0.5, ge=0, le=1)   # passes: median |rho| at full randomisation <= this


class EvaluateParams(_Section):
    out_dir: str = "data/evaluate"
    metrics: str = "metrics/evaluate.json"
    plots_dir: str = "plots"
    shard_size: int = Field(default=16, ge=1)
    steps: int = Field(default=10, ge=2)                # deletion / insertion curve steps
    causal: bool = True                                 # deletion / insertion AUC (costs 2 (steps + 1) forwards)
    causal_split: str | None = "val"                    # ... on this split's explanations (null: all)
    pointing_tolerance: float = Field(default=15.0, ge=0)
    sanity: SanityParams = SanityParams()


class ReportParams(_Section):
    out: str = "report/audit.html"
    summary: str = "report/summary.md"
    gallery: int = Field(default=4, ge=0)               # overlays per gallery row (best, worst, most surprising)


class HeldoutSet(_Section):
    """Scenes of the synthetic generator rendered in memory for the guide stage's held-out measures (a seed neither
    the audit nor the training scenes use)."""

    seed: int
    n_images: int = Field(default=400, ge=1)
    correlation: float | None = Field(default=None, ge=0, le=1)   # the cue's; null: pull.synthetic.spurious's


class ProbeSet(_Section):
    """The paired spurious-cue probe: scenes 0 .. n_scenes - 1 of ``seed`` without the cue label, each rendered with
    and without the cue (detection.guidance_data.paired_probe); at least 200 per arm."""

    seed: int = 9002
    n_scenes: int = Field(default=800, ge=1)


class GuideParams(_Section):
    """Model guidance (Rao et al. 2023, https://arxiv.org/abs/2303.11932): fine-tune infer.classifier with
    BCE + lam * L_loc on the training scenes (boxes of a seeded `fraction` of them), re-audit it (infer, the
    classes explain jobs, evaluate) under `model_id` into `out_dir`, and compare both on held-out scenes."""

    out_dir: str = "data/guide"
    model: str = "models/classifier_guided.pt"         # TorchScript + .json sidecar (save_classifier)
    metrics: str = "metrics/guide.json"
    model_id: str = "demo-scene-guided"                # the re-audit's model id (infer.classifier keeps its own)
    weights: str | None = None                         # a saved guided classifier to copy instead of training
    loss: Literal["energy", "l1", "rrr", "ppce"] = "energy"
    attribution: Literal["ixg", "grad_cam"] = "ixg"
    layer: str | None = "features.4"                   # null: the input (ixg only)
    lam: float = Field(default=1.0, ge=0)              # weight of the localisation loss (summed over images)
    fraction: float = Field(default=0.1, gt=0, le=1)   # training images whose boxes are used
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)   # gradient clipping (null: none)
    classes: list[str] | None = None                   # guide only these classes (null: all, the paper's setting)
    time_limit_s: float | None = Field(default=None, gt=0)
    seed: int = 0                                      # box subset, sampled classes, batches
    audit_jobs: list[ExplainJob] | None = None         # null: explain.jobs with targets 'classes', no FILE_OPTIONS
    probe: ProbeSet = ProbeSet()
    decorrelated: HeldoutSet = HeldoutSet(seed=9001, correlation=0.5)
    heldout: HeldoutSet = HeldoutSet(seed=9003)

    @model_validator(mode="after")
    def _layer_for_grad_cam(self) -> GuideParams:
        if self.attribution == "grad_cam" and self.layer is None:
            raise ValueError("attribution 'grad_cam' needs a layer (e.g. features.2)")
        return self


class RexlPolicyParams(_Section):
    """One RExL policy (``explainers.rexl``) the ``models_rexl`` stage provides for an audited model: trained by
    ``tasks.rexl_train`` (MaskablePPO, the dataset-wide regime: one agent for every class / pedestrian) on the
    training scenes, or, with ``weights``, a given policy file that the stage verifies (the guard: trained for this
    model's weights) and copies."""

    weights: str | None = None                         # a policy file to verify and copy instead of training
    mode: Literal["deletion", "insertion"] = "deletion"
    perturbation: Literal["blur", "mean", "constant", "noise"] | None = None   # null: mean (deletion), blur
    features: Literal["auto", "backbone", "fixed"] | dict[str, int | str | list[int]] = "auto"   # auto: the
    # classifier's backbone, else a fixed CNN; or a feature spec, e.g. {kind: backbone, pool: 4, cam: 7}
    # (explainers.rexl); {kind: cells, blocks: [2, 3]}: a cell policy (classifier, deletion; tasks.rexl_cells_ppo)
    grid: int = Field(default=7, ge=2)                 # k: a k x k grid of cells, k^2 steps per roll-out
    steps: int = Field(default=20_000, ge=1)           # environment steps (canvases) of training
    images: int = Field(default=64, ge=1)              # training scenes (models.train_data's generator and seed)
    n_envs: int = Field(default=16, ge=1)              # episodes advanced in lockstep (one batched forward)
    lr: float = Field(default=3e-4, gt=0)
    seed: int = 0
    checkpoint_every: int = Field(default=10_000, ge=1)   # steps between resumable checkpoints
    time_limit_s: float | None = Field(default=None, gt=0)   # stop training after this many seconds
    min_height: float = Field(default=60.0, ge=0)      # detector: training pedestrians at least this tall (px)
    options: dict[str, bool | int | float | str | list[int]] = {}   # more tasks.rexl_train.train_policy keywords
    # (tasks.rexl_cells_ppo.train_cells_ppo's for a cell policy), e.g. {hidden: [256, 128], n_epochs: 4} (checked
    # against its signature by the stage)


# rexl.<model>: one policy, or a list of them; the tag is chosen by the value's type, so a mistake is reported once,
# against the form given (the tags are left out of error keys: :func:`_format_error`)
_UNION_TAGS = ("one policy", "policy list")
RexlPolicies = Annotated[Annotated[RexlPolicyParams, Tag(_UNION_TAGS[0])]
                         | Annotated[list[RexlPolicyParams], Tag(_UNION_TAGS[1])],
                         Discriminator(lambda v: _UNION_TAGS[1] if isinstance(v, list) else _UNION_TAGS[0])]


class RexlPolicyEntry(NamedTuple):
    """One configured RExL policy: ``name`` (``<model>_<mode>``, its file's stem), ``model`` (``classifier`` /
    ``detector``), ``key`` (its params key, e.g. ``rexl.detector`` or ``rexl.detector[1]``) and ``spec``."""

    name: str
    model: str
    key: str
    spec: RexlPolicyParams


class RexlParams(_Section):
    """The ``models_rexl`` stage: RExL policies per audited model (``classifier``: ``infer.classifier``;
    ``detector``: the explain stage's detector; null: none), each written to ``<out_dir>/<model>_<mode>.pt`` -- the
    file a ``rexl`` explain job's ``options.policy`` names -- and ``metrics``. A model takes one policy, or a list of
    policies of distinct modes (a deletion and an insertion policy: RExL trains one agent per game). Training
    checkpoints (resume after a crash) go under ``checkpoint_dir``, outside the stage's outputs, one folder per
    training configuration."""

    out_dir: str = "models/rexl"
    metrics: str = "metrics/rexl.json"
    checkpoint_dir: str = ".cache/xai-audit/rexl"
    classifier: RexlPolicies | None = None
    detector: RexlPolicies | None = None

    @model_validator(mode="after")
    def _one_policy_per_mode(self) -> RexlParams:
        for model in ("classifier", "detector"):
            specs = getattr(self, model)
            if isinstance(specs, list):
                if not specs:
                    raise ValueError(f"rexl.{model}: an empty list (null: no policy)")
                modes = [s.mode for s in specs]
                twice = sorted({m for m in modes if modes.count(m) > 1})
                if twice:
                    raise ValueError(f"rexl.{model}: more than one policy of mode {twice} (each writes "
                                     f"{model}_<mode>.pt)")
        return self

    def policies(self) -> dict[str, RexlPolicyEntry]:
        """The configured policies by name (``<model>_<mode>``): the classifier's, then the detector's, in the
        order given."""
        out = {}
        for model in ("classifier", "detector"):
            specs = getattr(self, model)
            if specs is None:
                continue
            listed = isinstance(specs, list)
            for i, spec in enumerate(specs if listed else [specs]):
                name = f"{model}_{spec.mode}"
                out[name] = RexlPolicyEntry(name, model, f"rexl.{model}[{i}]" if listed else f"rexl.{model}", spec)
        return out

    def policy(self, model: str, mode: str = "deletion") -> RexlPolicyParams | None:
        """The spec of ``model``'s ``mode`` policy, or None when it has none."""
        found = self.policies().get(f"{model}_{mode}")
        return None if found is None else found.spec

    def policy_file(self, name: str) -> Path | None:
        """``<out_dir>/<name>.pt`` (absolute) of a configured policy (``name``: ``<model>_<mode>``, a key of
        :meth:`policies`); None when there is none of that name."""
        return (Path(self.out_dir) / f"{name}.pt").resolve() if name in self.policies() else None


class FastShapNetParams(_Section):
    """The FastShapParts network (``explainers.fastshap``, FastSHAP: Jethani et al. 2022, arXiv 2107.07436) of the
    explain stage's detector's body-part game that the ``models_fastshap`` stage provides: trained by
    ``tasks.fastshap_train`` on the training scenes' pedestrians (``parts.grouping``'s parts plus the context, the
    game blur-hiding players), or, with ``weights``, a given weights file that the stage verifies (the guard: trained
    for this detector's weights, this grouping and perturbation) and copies. The defaults are the shipped file's
    (``weights/demo/fastshap_parts.pt``) training configuration."""

    weights: str | None = None                         # a weights file to verify and copy instead of training
    scenes: int | None = Field(default=None, ge=2)     # training scenes 0 .. scenes - 1 (models.train_data's generator
    # and seed), the last heldout_scenes of them held out; null: models.train_data.n_images
    heldout_scenes: int = Field(default=60, ge=1)      # the held-out exact check's scenes (never trained on)
    persons: int | None = Field(default=400, ge=2)     # at most this many training persons (null: every one)
    heldout_persons: int = Field(default=6, ge=0)      # persons of the exact check (2^n forwards each; 0: no check)
    min_height: float = Field(default=60.0, ge=0)      # training pedestrians at least this tall (px)
    pairs: int = Field(default=16, ge=1)               # Shapley-kernel coalition pairs per person (cached)
    epochs: int = Field(default=60, ge=1)
    batch: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    seed: int = 0                                      # coalitions, initialisation, epoch shuffles
    perturbation: Literal["blur", "mean", "constant", "noise"] = "blur"   # how a player is hidden (the game's)
    mirror: bool = False                               # add mirror images (only for a mirror-symmetric game)

    @model_validator(mode="after")
    def _heldout_inside(self) -> FastShapNetParams:
        if self.scenes is not None and self.heldout_scenes >= self.scenes:
            raise ValueError(f"heldout_scenes ({self.heldout_scenes}) must be fewer than scenes ({self.scenes})")
        return self


class FastShapGridNetParams(_Section):
    """The FastShapGrid network (``explainers.fastshap_grid``: FastSHAP, Jethani et al. 2022, arXiv 2107.07436, on a
    grid of cells) of the audited classifier (``infer.classifier``) that the ``models_fastshap`` stage provides:
    trained by ``tasks.fastshap_grid_train.train_grid_weights`` on the training scenes (every class), or, with
    ``weights``, a given weights file that the stage verifies (manifest, grid / perturbation / feature blocks, the
    guard: trained for this classifier's weights) and copies. The defaults are the shipped file's
    (``weights/demo/fastshap_grid_classifier.pt``) training configuration."""

    weights: str | None = None                         # a weights file to verify and copy instead of training
    scenes: int | None = Field(default=3840, ge=3)     # training scenes 0 .. scenes - 1 (models.train_data's generator
    # and seed; null: models.train_data.n_images), the last heldout_scenes of them held out
    heldout_scenes: int = Field(default=40, ge=1)      # the stored held-out check's scenes (never trained on)
    grid: tuple[int, int] = (6, 8)                     # rows x cols cells (the players)
    pairs: int = Field(default=32, ge=1)               # Shapley-kernel coalition pairs per scene (cached)
    epochs: int = Field(default=40, ge=1)
    batch: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    width: int = Field(default=32, ge=1)
    seed: int = 0                                      # coalitions, initialisation, epoch shuffles
    perturbation: Literal["mean", "blur", "constant", "noise"] = "mean"   # how a cell is hidden
    features: list[int] = [2, 3]                       # the classifier's feature blocks the network reads ([]: pixels)
    rise: int = Field(default=250, ge=1)               # RISE masks of the held-out check's comparison
    steps: int = Field(default=20, ge=1)               # deletion / insertion steps of the held-out check

    @model_validator(mode="after")
    def _heldout_inside(self) -> FastShapGridNetParams:
        if self.scenes is not None and self.heldout_scenes > self.scenes - 2:
            raise ValueError(f"heldout_scenes ({self.heldout_scenes}) must leave at least 2 of scenes "
                             f"({self.scenes}): one to train on, one to validate")
        if min(self.grid) < 1:
            raise ValueError(f"grid must be >= 1 cell each way, got {list(self.grid)}")
        return self


class FastShapGridDetectorNetParams(_Section):
    """The FastShapGridDetector network (``explainers.fastshap_grid_detector``: FastSHAP, Jethani et al. 2022, arXiv
    2107.07436, on RExL's k x k cells of a detection's D-RISE game, conditioned on the detection's box through the
    detector's own head maps) of the explain stage's detector that the ``models_fastshap`` stage provides: trained by
    ``tasks.fastshap_grid_detector_train.train_detector_grid_weights`` on the training scenes' person detections
    (``tasks.rexl_train.training_scenes``: the first ``images`` scenes, the last ``heldout`` of them held out for the
    stored check), or, with ``weights``, a given weights file that the stage verifies (manifest, grid / layers /
    perturbation, the guard: trained for this detector's weights) and copies. The defaults are the shipped file's
    (``weights/demo/fastshap_grid_detector.pt``) training configuration."""

    weights: str | None = None                         # a weights file to verify and copy instead of training
    images: int = Field(default=192, ge=3)             # training scenes 0 .. images - 1, the last heldout held out
    heldout: int = Field(default=16, ge=1)             # the stored held-out check's scenes (never trained on)
    grid: int = Field(default=9, ge=1)                 # k x k cells (the players)
    layers: list[int] = [0, 1]                         # the detection head's input maps the network reads (0: finest)
    min_height: float = Field(default=60.0, ge=0)      # training detections at least this tall (px)
    pairs: int = Field(default=32, ge=1)               # Shapley-kernel coalition pairs per scene (cached)
    perturbation: Literal["mean", "blur", "constant", "noise"] = "mean"   # how a cell is hidden
    epochs: int = Field(default=60, ge=1)
    batch: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    width: int = Field(default=64, ge=1)
    seed: int = 0                                      # coalitions, initialisation, epoch shuffles
    drise: int = Field(default=1000, ge=1)             # D-RISE masks of the held-out check's comparison
    steps: int = Field(default=20, ge=1)               # deletion / insertion steps of the held-out check

    @model_validator(mode="after")
    def _heldout_inside(self) -> FastShapGridDetectorNetParams:
        if self.images - self.heldout < 2:
            raise ValueError(f"heldout ({self.heldout}) must leave at least 2 of images ({self.images}): one to "
                             f"train on, one to validate")
        if not self.layers or min(self.layers) < 0:
            raise ValueError(f"layers must name at least one head map index >= 0, got {self.layers}")
        return self


class FastShapParams(_Section):
    """The ``models_fastshap`` stage: the FastShapParts network of the explain stage's detector (``detector``; null:
    none) written to ``<out_dir>/detector_parts.pt`` -- the file a ``fastshap`` / ``fastshap_bayes`` explain job's
    ``options.weights`` names -- and the FastShapGrid network of the audited classifier (``classifier``; null: none)
    written to ``<out_dir>/classifier_grid.pt`` -- a ``fastshap_grid`` job's -- the FastShapGridDetector network of
    the explain stage's detector (``detector_grid``; null: none) written to ``<out_dir>/detector_grid.pt`` -- a
    ``fastshap_grid_detector`` job's -- and ``metrics``. The body-part
    players are ``parts.grouping``'s parts plus the context (the grouping is that key's, not a second one here). The
    coalition caches and the resumable training states go under ``cache_dir``, outside the stage's outputs, one
    folder per configuration."""

    out_dir: str = "models/fastshap"
    metrics: str = "metrics/fastshap.json"
    cache_dir: str = ".cache/xai-audit/fastshap"
    detector: FastShapNetParams | None = None
    classifier: FastShapGridNetParams | None = None
    detector_grid: FastShapGridDetectorNetParams | None = None

    def weights_file(self) -> Path | None:
        """``<out_dir>/detector_parts.pt`` (absolute) when ``detector`` is configured, else None."""
        return None if self.detector is None else (Path(self.out_dir) / "detector_parts.pt").resolve()

    def grid_weights_file(self) -> Path | None:
        """``<out_dir>/classifier_grid.pt`` (absolute) when ``classifier`` is configured, else None."""
        return None if self.classifier is None else (Path(self.out_dir) / "classifier_grid.pt").resolve()

    def detector_grid_weights_file(self) -> Path | None:
        """``<out_dir>/detector_grid.pt`` (absolute) when ``detector_grid`` is configured, else None."""
        return None if self.detector_grid is None else (Path(self.out_dir) / "detector_grid.pt").resolve()

    def written_files(self) -> list[Path]:
        """Every weights file the stage writes (absolute)."""
        return [f for f in (self.weights_file(), self.grid_weights_file(), self.detector_grid_weights_file())
                if f is not None]


class Params(_Section):
    seed: int = 0
    workers: int = Field(default=2, ge=1)       # threads of a stage's Prefect task runner
    pull: PullParams = PullParams()
    models: ModelsParams = ModelsParams()
    infer: InferParams = InferParams()
    parts: PartsParams = PartsParams()
    explain: ExplainParams = ExplainParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    guide: GuideParams = GuideParams()
    rexl: RexlParams = RexlParams()
    fastshap: FastShapParams = FastShapParams()

    def explain_detector(self) -> DetectorSpec:
        """The detector the explain stage audits (explain.detector, else the first of infer.detectors)."""
        wanted = self.explain.detector or self.infer.detectors[0].id
        return next(d for d in self.infer.detectors if d.id == wanted)


def weights_read_by_jobs(params: Params) -> set[Path]:
    """The files (absolute) that the explain jobs' ``options.weights`` name (a learned explainer's network)."""
    return {Path(str(job.options["weights"])).resolve() for job in params.explain.jobs if "weights" in job.options}


def _format_error(err: dict) -> str:
    loc = [p for p in err["loc"] if p not in _UNION_TAGS]
    key = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    if err["type"] == "missing":
        return f"{key}: {msg}"
    return f"{key or '(top level)'}: {msg} (got {err['input']!r})"


RESERVED_JOB_NAMES = ("errors", "sag")   # a stage's other tables, stored beside the jobs' (tasks.stages)


def check_job_names(jobs: list[ExplainJob], where: str) -> None:
    """Raises :class:`ParamsError` naming ``where[i]`` when a labelled job's name (:attr:`ExplainJob.name`) is a
    stage's reserved table name, when a job's name names a job of another method, or when it repeats on the same
    targets: one name is one method, and one (targets, name) is one table and one result-store key."""
    methods: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for i, job in enumerate(jobs):
        hint = "another label" if job.label else f"a label, e.g. label: {job.method}_2"
        if job.label and job.name in RESERVED_JOB_NAMES:     # (a method's own name is the explainers' check)
            raise ParamsError(f"{where}[{i}]: the name {job.name!r} is a stage's own table ({RESERVED_JOB_NAMES}); "
                              f"give the job another label")
        if methods.setdefault(job.name, job.method) != job.method:
            raise ParamsError(f"{where}[{i}]: the name {job.name!r} is already a {methods[job.name]} job's; give the "
                              f"{job.method} job {hint}")
        if (job.targets, job.name) in seen:
            raise ParamsError(f"{where}[{i}]: a second {job.name!r} job on {job.targets!r} (give one {hint})")
        seen.add((job.targets, job.name))


def parse_params(data: dict, origin: str = "params.yaml", check_files: bool = True) -> Params:
    """Validate a params mapping; ``origin`` names it in error messages."""
    try:
        params = Params.model_validate(data if data is not None else {})
    except ValidationError as exc:
        lines = [f"{origin}: {_format_error(e)}" for e in exc.errors()]
        raise ParamsError("\n".join(lines)) from None
    known = [d.id for d in params.infer.detectors]
    for i, name in enumerate(params.parts.detectors or []):
        if name not in known:
            raise ParamsError(f"{origin}: parts.detectors[{i}]: not an id of infer.detectors {known} (got {name!r})")
    if params.explain.detector is not None and params.explain.detector not in known:
        raise ParamsError(f"{origin}: explain.detector: not an id of infer.detectors {known} "
                          f"(got {params.explain.detector!r})")
    check_job_names(params.explain.jobs, f"{origin}: explain.jobs")
    if params.guide.audit_jobs is not None:
        check_job_names(params.guide.audit_jobs, f"{origin}: guide.audit_jobs")
    for i, job in enumerate(params.explain.jobs):
        if job.targets == "classes" and params.infer.classifier is None:
            raise ParamsError(f"{origin}: explain.jobs[{i}]: targets 'classes' needs infer.classifier")
    if check_files:
        for key, value in params.pull.input_paths():
            if not Path(value).exists():
                raise ParamsError(f"{origin}: {key}: file not found (got {value!r})")
    return params


def read_yaml(path: str | Path) -> Any:
    """A YAML file as DVC reads it (``dvc.utils.serialize.parse_yaml``: ruamel.yaml's safe loader, YAML 1.2):
    plain dicts / lists / scalars, None for an empty file. Raises ``ruamel.yaml.YAMLError`` (a duplicated key
    too) and OSError."""
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(Path(path))


def load_params(path: str | Path = "params.yaml", check_files: bool = True) -> Params:
    """Read (YAML 1.2, as DVC does: :func:`read_yaml`) and validate params.yaml. Raises :class:`ParamsError`."""
    from ruamel.yaml import YAMLError

    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = read_yaml(path)
    except YAMLError as exc:
        detail = " ".join(str(exc).split("To suppress this check")[0].split())
        raise ParamsError(f"{path}: invalid YAML ({detail})") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return parse_params(data, str(path), check_files)
