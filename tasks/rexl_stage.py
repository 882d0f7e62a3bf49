"""Tasks of the ``models_rexl`` stage: RExL policies (``explainers.rexl``, arXiv 2111.13406) for each audited model
that ``params.yaml``'s ``rexl`` section configures, written to ``rexl.out_dir`` (``<model>_<mode>.pt``, the file a
``rexl`` explain job's ``options.policy`` names), and ``rexl.metrics``.

Per model (``classifier``: ``infer.classifier``; ``detector``: the explain stage's detector), either

* ``weights: null``: train with ``tasks.rexl_train.train_policy`` (MaskablePPO, the dataset-wide regime: one
  class-conditioned agent for the classifier, one box-conditioned agent for every pedestrian of the detector) or,
  where ``features`` is ``{kind: cells, blocks: [...]}`` (a classifier's deletion policy), with
  ``tasks.rexl_cells_ppo.train_cells_ppo`` (MaskablePPO whose actor is a ``CellPolicy``), or where it is
  ``{kind: detector_cells, layers: [...]}`` (a detector's box-conditioned deletion or insertion policy), with
  ``tasks.rexl_boxes_ppo.train_boxes_ppo`` (the same learner on the detector's game), on the training scenes
  (``tasks.rexl_train.training_scenes``: the generator of ``pull.synthetic`` with the training seed, never the
  audited scenes), seeded, resumable after a crash from SB3 checkpoints under ``rexl.checkpoint_dir`` (one folder
  per training configuration and code, so a changed one never resumes another's run; removed once the training has
  finished); or
* ``weights: <file>``: verify the given policy file (the shipped-weights manifest beside it, when there is one:
  ``tasks.shipped_weights.verify_given``; it is a policy of this mode, grid and substrate; and the explainer's guard:
  it was trained for these model weights) and copy it.

The audited model is built as the explain stage builds it (``tasks.model_cache``), so the weights the policy is
tied to (``explainers.trained.weights_fingerprint``) are the ones explain will score with.
"""
from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import torch

from detection.models.specs import file_sha256
from explainers.metrics import default_substrate
from explainers.rexl import PolicyCheckpoint, Rexl
from explainers.rexl_detector import KIND as KIND_DETECTOR_CELLS
from tasks.params import TRAINING_DATA, Params, RexlPolicyEntry, RexlPolicyParams
from tasks.result_store import digest

MODELS = ("classifier", "detector")


def substrate(spec: RexlPolicyParams) -> str:
    """The policy's perturbation: ``spec.perturbation``, else mean (deletion) / blur (insertion), as
    ``tasks.rexl_train`` defaults."""
    return spec.perturbation or default_substrate(spec.mode)


def _key(model: str, key: str | None) -> str:
    """The params key errors name: the policy's own (``rexl.detector[1]`` in a list), else ``rexl.<model>``."""
    return key or f"rexl.{model}"


def audited_model(params: Params, model: str, key: str | None = None):
    """The audited classifier (``infer.classifier``) or detector (the explain stage's) on the CPU, built as the
    explain stage builds it. Raises ValueError for a model the params do not have, FileNotFoundError naming a
    missing weights file (both name ``key``, the policy's params key; default ``rexl.<model>``)."""
    from tasks.model_cache import classifier_model, detector_model

    spec = params.infer.classifier if model == "classifier" else params.explain_detector()
    if spec is None:
        raise ValueError(f"params {_key(model, key)}: no {model} to train a policy for (infer.classifier is null)")
    if spec.weights is not None and not Path(spec.weights).is_file():
        raise FileNotFoundError(f"params {_key(model, key)}: the audited {model}'s weights {spec.weights} not found "
                                f"(run the models stage first)")
    build = classifier_model if model == "classifier" else detector_model
    return build(spec.model_dump_json(), "cpu", params.explain.chunk_size)


def guard_scorer(params: Params, model: str, net=None, key: str | None = None):
    """A scorer of the audited model with one placeholder target: what the explainer's guard fingerprints (errors
    building the model name ``key``, as :func:`audited_model`'s)."""
    from detection.scorers import ClassifierScorer, DRiseScorer

    net = net if net is not None else audited_model(params, model, key)
    if model == "classifier":
        return ClassifierScorer(net, [0])
    probs = torch.zeros(1, net.num_classes)
    probs[0, 0] = 1.0
    return DRiseScorer(net, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), probs)


def check_given(params: Params, policy: RexlPolicyEntry, src: Path) -> PolicyCheckpoint:
    """Check a given policy (``<policy.key>.weights``) before the stage copies it instead of training: the manifest
    beside it (if any) lists its bytes, it is a RExL policy file of the configured ``mode``, ``grid`` and
    perturbation, and ``explainers.rexl.Rexl`` accepts it for the audited model's weights. Returns the checkpoint.
    Raises FileNotFoundError (file missing), ``tasks.shipped_weights.WeightsMismatchError`` (bytes differ from the
    manifest) and ValueError naming the key and the file: not a policy, another mode / grid / substrate (the keys
    named), or trained for other model weights (set ``weights: null`` to train one for this model)."""
    from tasks.shipped_weights import verify_given

    model, spec, key = policy.model, policy.spec, f"{policy.key}.weights"
    verify_given(src, key)
    try:
        ckpt = PolicyCheckpoint.load(src)
    except ValueError as exc:
        raise ValueError(f"params {key}: {exc}") from None
    wanted = {"mode": spec.mode, "grid": spec.grid, "perturbation": substrate(spec)}
    differ = [f"{k} {getattr(ckpt, k)!r} (params {v!r})" for k, v in wanted.items() if getattr(ckpt, k) != v]
    if differ:
        raise ValueError(f"params {key}: {src} is a policy of another {', '.join(differ)}: set {policy.key} to "
                         f"match it, or weights: null to train one")
    scorer = guard_scorer(params, model, key=policy.key)      # its errors name the key themselves
    try:
        Rexl(scorer, policy=ckpt)
    except ValueError as exc:
        raise ValueError(f"params {key}: {src}: {exc} (or set {key}: null to train one)") from None
    return ckpt


def training_setup(params: Params, model: str, spec: RexlPolicyParams, key: str | None = None):
    """(scorer, episodes, conditioning, num_classes) of the dataset-wide regime for ``model``: the classifier over
    every class (class one-hot conditioning), or the detector's training pedestrians (box conditioning, at least
    ``spec.min_height`` px tall)."""
    from detection.scorers import ClassifierScorer
    from tasks.rexl_train import classifier_episodes, detector_episodes, training_scenes

    net = audited_model(params, model, key)
    if model == "classifier":
        images = training_scenes(spec.images, net.input_size, params)
        episodes, conditioning = classifier_episodes(images, net.num_classes, "dataset")
        return ClassifierScorer(net, range(net.num_classes)), episodes, conditioning, net.num_classes
    scorer, episodes = detector_episodes(net, training_scenes(spec.images, None, params), spec.grid, spec.min_height,
                                         params.explain_detector().person_class)
    return scorer, episodes, "box", None


FIXED = {"grid", "mode", "perturbation", "conditioning", "num_classes", "features", "regime", "steps", "n_envs", "seed",
         "learning_rate", "checkpoint_dir", "checkpoint_every", "progress", "training", "time_limit_s", "blocks",
         "init", "warmup_steps", "init_sharpen", "layers", "min_height", "person", "detector"}
# keywords the stage sets from rexl.<model>'s own keys, or never
# (it trains from scratch: init, a fine-tune's start, and its warm-up / sharpening do not apply)


# a cell policy's feature kind -> (the model it serves, the key of its indices, their default, what they index)
CELL_KINDS = {"cells": ("classifier", "blocks", [2, 3], "feature block indices"),
              KIND_DETECTOR_CELLS: ("detector", "layers", [0, 1], "the detection head's input maps, 0 the finest")}


def _kind(spec: RexlPolicyParams) -> str | None:
    return spec.features.get("kind") if isinstance(spec.features, dict) else None


def is_cells(spec: RexlPolicyParams) -> bool:
    """Whether ``spec`` asks for a cell policy (``features: {kind: cells, ...}``: ``tasks.rexl_cells_ppo``)."""
    return _kind(spec) == "cells"


def is_detector_cells(spec: RexlPolicyParams) -> bool:
    """Whether ``spec`` asks for a detector's box-conditioned cell policy (``features: {kind: detector_cells, ...}``:
    ``tasks.rexl_boxes_ppo.train_boxes_ppo``)."""
    return _kind(spec) == KIND_DETECTOR_CELLS


def _int_list(where: str, name: str, value, default: list[int]) -> tuple[int, ...]:
    value = default if value is None else value
    value = value if isinstance(value, list) else [value]
    if not value or not all(isinstance(b, int) and not isinstance(b, bool) for b in value):
        raise ValueError(f"{where}: {name} must be a list of integers, got {value!r}")
    return tuple(value)


def cell_indices(model: str, spec: RexlPolicyParams, kind: str, key: str | None = None) -> tuple[int, ...]:
    """The indices of a cell policy's ``features`` of ``kind`` (``CELL_KINDS``: a classifier's feature blocks,
    default 2, 3; a detector's head input maps, default 0, 1). Raises ValueError naming ``<key>.features``
    for a model the kind does not serve, insertion mode for a classifier's (its cell policies are deletion-only),
    keys other than kind and the indices', or indices that are not a list of integers."""
    owner, name, default, what = CELL_KINDS[kind]
    where = f"params {_key(model, key)}.features"
    modes = ("deletion", "insertion") if kind == KIND_DETECTOR_CELLS else ("deletion",)
    if model != owner or spec.mode not in modes:
        raise ValueError(f"{where}: kind {kind!r} is a {owner}'s {' or '.join(modes)} policy, not the {model}'s "
                         f"{spec.mode}")
    extra = sorted(set(spec.features) - {"kind", name})
    if extra:
        raise ValueError(f"{where}: unknown keys {extra} for kind {kind!r} (it takes {name}: {what})")
    return _int_list(where, name, spec.features.get(name), default)


def detector_layers(model: str, spec: RexlPolicyParams, key: str | None = None) -> tuple[int, ...]:
    """The head input maps of a detector cell policy's ``features`` (:func:`cell_indices`)."""
    return cell_indices(model, spec, KIND_DETECTOR_CELLS, key)


def cell_blocks(model: str, spec: RexlPolicyParams, key: str | None = None) -> tuple[int, ...]:
    """The feature blocks of a classifier cell policy's ``features`` (:func:`cell_indices`)."""
    return cell_indices(model, spec, "cells", key)


def train_options(model: str, spec: RexlPolicyParams, key: str | None = None) -> dict:
    """``spec.options`` checked against the trainer's keywords (``tasks.rexl_train.train_policy``, or for a cell
    policy ``tasks.rexl_cells_ppo.train_cells_ppo``; lists made tuples). Raises ValueError naming
    ``<key>.options`` (``key``: the policy's params key, default ``rexl.<model>``) and the unknown keys."""
    if is_cells(spec):
        from tasks.rexl_cells_ppo import train_cells_ppo as trainer
    elif is_detector_cells(spec):
        from tasks.rexl_boxes_ppo import train_boxes_ppo as trainer
    else:
        from tasks.rexl_train import train_policy as trainer

    known = set(inspect.signature(trainer).parameters) - {"scorer", "episodes", "images"} - FIXED
    unknown = sorted(set(spec.options) - known)
    if unknown:
        raise ValueError(f"params {_key(model, key)}.options: unknown {unknown}; {trainer.__name__} takes "
                         f"{sorted(known)} (the others are keys of the policy's own params)")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.options.items()}


def code_digest() -> str:
    """SHA-256 of the training code: every project module ``tasks.rexl_stage`` imports (the environment, the
    learner's setup, the policy format)."""
    from tasks.result_store import files_digest
    from tasks.stage_deps import Entry, module_closure, module_file

    return files_digest(sorted(module_file(m) for m in module_closure((Entry("tasks.rexl_stage"),))))


def checkpoint_folder(params: Params, model: str, spec: RexlPolicyParams) -> Path:
    """``rexl.checkpoint_dir/<model>-<digest>``: the digest of everything the training depends on (the policy
    params, the audited model's weights file, the training scenes' generator and seed, the training code), so that
    a rerun resumes only its own configuration's checkpoint."""
    mspec = params.infer.classifier if model == "classifier" else params.explain_detector()
    weights = file_sha256(mspec.weights) if mspec.weights and Path(mspec.weights).is_file() else None
    key = digest({"rexl": spec.model_dump(mode="json", exclude={"weights", "checkpoint_every"}),
                  "model": mspec.model_dump(mode="json"), "weights": weights, "seed": params.seed,
                  "train_data": params.models.train_data.model_dump(mode="json"),
                  "generator": params.pull.synthetic.model_dump(mode="json", exclude={"n_images"}),
                  "code": code_digest()})
    return Path(params.rexl.checkpoint_dir) / f"{model}-{key[:16]}"


def train(params: Params, model: str, spec: RexlPolicyParams, progress: bool = True,
          key: str | None = None) -> tuple[PolicyCheckpoint, dict]:
    """Train ``model``'s policy (module docstring); returns the checkpoint and ``train_policy``'s summary; errors in
    the params name ``key`` (the policy's params key, default ``rexl.<model>``). The
    checkpoint folder (:func:`checkpoint_folder`) serves a rerun after a crash only: it is removed once training has
    finished, so a finished training is never "resumed" at zero steps (whose record would have no episodes)."""
    from tasks.rexl_train import train_policy

    options = train_options(model, spec, key)
    folder = checkpoint_folder(params, model, spec)
    if is_cells(spec) or is_detector_cells(spec):
        trainer = train_cells if is_cells(spec) else train_detector_cells
        out = trainer(params, model, spec, folder, options, progress, key)
        shutil.rmtree(folder, ignore_errors=True)
        return out
    scorer, episodes, conditioning, num_classes = training_setup(params, model, spec, key)
    out = train_policy(scorer, episodes, grid=spec.grid, mode=spec.mode, perturbation=substrate(spec),
                       conditioning=conditioning, num_classes=num_classes, features=spec.features,
                       regime="dataset", steps=spec.steps, n_envs=spec.n_envs, seed=spec.seed,
                       learning_rate=spec.lr, checkpoint_dir=folder, checkpoint_every=spec.checkpoint_every,
                       progress=progress, time_limit_s=spec.time_limit_s,
                       training={"model": model, "images": spec.images, "data": TRAINING_DATA}, **options)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def train_cells(params: Params, model: str, spec: RexlPolicyParams, folder: Path, options: dict,
                progress: bool, key: str | None = None) -> tuple[PolicyCheckpoint, dict]:
    """A cell policy for the audited classifier by ``tasks.rexl_cells_ppo.train_cells_ppo`` from scratch on its
    training scenes (every class, the dataset-wide regime)."""
    from detection.scorers import ClassifierScorer
    from tasks.rexl_cells_ppo import train_cells_ppo
    from tasks.rexl_train import training_scenes

    blocks = cell_blocks(model, spec, key)
    net = audited_model(params, model, key)
    images = training_scenes(spec.images, net.input_size, params)
    return train_cells_ppo(ClassifierScorer(net, range(net.num_classes)), images, grid=spec.grid, blocks=blocks,
                           perturbation=substrate(spec), steps=spec.steps, n_envs=spec.n_envs, seed=spec.seed,
                           learning_rate=spec.lr, checkpoint_dir=folder, checkpoint_every=spec.checkpoint_every,
                           progress=progress, time_limit_s=spec.time_limit_s,
                           training={"model": model, "images": spec.images, "data": TRAINING_DATA}, **options)


def train_detector_cells(params: Params, model: str, spec: RexlPolicyParams, folder: Path, options: dict,
                         progress: bool, key: str | None = None) -> tuple[PolicyCheckpoint, dict]:
    """A box-conditioned cell policy for the explain stage's detector by ``tasks.rexl_boxes_ppo.train_boxes_ppo``
    (MaskablePPO whose actor is a ``CellPolicy``, from scratch) on its pedestrians of the training scenes (at least
    ``min_height`` px tall). The imitation recipe (``tasks.rexl_imitation.train_look_ahead_boxes``, DAgger on a
    one-step look-ahead teacher) is its CLI's, not the stage's."""
    from tasks.rexl_boxes_ppo import train_boxes_ppo
    from tasks.rexl_train import training_scenes

    layers = detector_layers(model, spec, key)
    net = audited_model(params, model, key)
    return train_boxes_ppo(net, training_scenes(spec.images, None, params), mode=spec.mode,
                           perturbation=substrate(spec), grid=spec.grid, layers=layers, min_height=spec.min_height,
                           person=params.explain_detector().person_class, steps=spec.steps, n_envs=spec.n_envs,
                           learning_rate=spec.lr, seed=spec.seed, checkpoint_dir=folder,
                           checkpoint_every=spec.checkpoint_every, time_limit_s=spec.time_limit_s, progress=progress,
                           training={"model": model, "images": spec.images, "data": TRAINING_DATA}, **options)


def _auc(training: dict) -> dict:
    """The training record's mean episode AUC of the first and last 10 % of its episodes."""
    return {"auc_first": training.get("auc_first"), "auc_last": training.get("auc_last")}


def provide_policy(params: Params, name: str, progress: bool = True) -> dict:
    """Train (``weights: null``) or verify and copy (``weights``: a file) the policy ``name`` (a key of
    :meth:`~tasks.params.RexlParams.policies`, ``<model>_<mode>``) to
    :meth:`~tasks.params.RexlParams.policy_file`; returns its metrics record: source, file, SHA-256, grid, mode,
    perturbation, conditioning, training steps, seconds, episodes, data and mean training AUC (first / last 10 %),
    all from the policy's own training record (a copied policy's metrics are the same bytes every run; the stage's
    wall time goes to ``metrics/timings.json``)."""
    policy = params.rexl.policies()[name]
    model, spec = policy.model, policy.spec
    out = params.rexl.policy_file(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    if spec.weights is not None:
        src = Path(spec.weights)
        ckpt = check_given(params, policy, src)
        shutil.copyfile(src, out)
        record = {"source": "copied", "weights": str(src)}
    else:
        try:
            ckpt, _ = train(params, model, spec, progress, policy.key)
        except ValueError as exc:
            text = str(exc)
            raise ValueError(text if text.startswith("params ") else f"params {policy.key}: {text}") from None
        ckpt.save(out)
        record = {"source": "trained"}
    t = ckpt.training
    record.update({"policy": str(Path(params.rexl.out_dir) / out.name), "sha256": file_sha256(out),
                   "grid": ckpt.grid, "mode": ckpt.mode, "perturbation": ckpt.perturbation,
                   "conditioning": ckpt.conditioning, "features": ckpt.features.get("kind"),
                   "model_sha256": ckpt.model_sha256[:12], "algorithm": t.get("algorithm"),
                   "regime": t.get("regime"), "steps": t.get("steps"), "episodes": t.get("episodes"),
                   "train_seconds": t.get("seconds"), "images": t.get("images"), "data": t.get("data"),
                   **_auc(t)})
    return record


def write_metrics(path: str | Path, records: dict[str, dict]) -> Path:
    """``metrics/rexl.json``: one record per policy, by name (:func:`provide_policy`)."""
    from tasks.shards import write_json

    path = Path(path)
    write_json(path, records)
    return path


__all__ = ["CELL_KINDS", "MODELS", "audited_model", "cell_blocks", "cell_indices", "check_given",
           "checkpoint_folder", "code_digest", "guard_scorer", "detector_layers", "is_cells", "is_detector_cells",
           "provide_policy", "train", "train_cells", "train_detector_cells", "train_options", "training_setup",
           "write_metrics"]
