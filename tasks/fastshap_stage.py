"""Tasks of the ``models_fastshap`` stage: the FastShapParts network (``explainers.fastshap``; FastSHAP, Jethani et
al. 2022, https://arxiv.org/abs/2107.07436) of the explain stage's detector's body-part game that ``params.yaml``'s
``fastshap.detector`` configures, written to ``fastshap.out_dir/detector_parts.pt`` (the file a ``fastshap`` /
``fastshap_bayes`` explain job's ``options.weights`` names: ``tasks.params.FastShapParams.weights_file``), the
FastShapGrid network (``explainers.fastshap_grid``) of the audited classifier's grid-cell game that
``fastshap.classifier`` configures, written to ``fastshap.out_dir/classifier_grid.pt`` (a ``fastshap_grid`` job's:
``grid_weights_file``), the FastShapGridDetector network (``explainers.fastshap_grid_detector``) of the explain
detector's grid-cell game that ``fastshap.detector_grid`` configures, written to
``fastshap.out_dir/detector_grid.pt`` (a ``fastshap_grid_detector`` job's: ``detector_grid_weights_file``), and
``fastshap.metrics``. The players of the parts game are ``parts.grouping``'s parts plus the context
(``parts.context``); those of the grid games the cells of ``fastshap.classifier.grid`` /
``fastshap.detector_grid.grid``. The grid networks are trained (:func:`provide_grid_weights`,
:func:`provide_detector_grid_weights`) or verified and copied as the parts network is (below).

Either

* ``weights: null``: train with ``tasks.fastshap_train.train_weights`` on the training scenes' pedestrians (the
  generator of ``pull.synthetic`` with the training seed, never the audited scenes; the last ``heldout_scenes`` of
  them held out for the exact check stored in the file), seeded; the coalition cache (Parquet, resumable) and the
  training state (``last.pt``, resumable after a crash) live under ``fastshap.cache_dir``, one folder per
  configuration and code (:func:`cache_folders`), so a changed one never resumes another's; the training state is
  removed once the training has finished, the coalition cache is kept (a rerun with other epochs / lr reuses it); or
* ``weights: <file>``: verify the given weights file (the shipped-weights manifest beside it, when there is one:
  ``tasks.shipped_weights.verify_given``; its players are this grouping's and context's, its perturbation this one;
  and the explainer's guard: it was trained for these detector weights) and copy it.

The audited detector is built as the explain stage builds it (``tasks.model_cache``), so the weights the network is
tied to (``explainers.trained.weights_fingerprint``) are the ones explain will score with.
"""
from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path

import torch

from detection.models.specs import file_sha256
from explainers.fastshap import FastShapCheckpoint, FastShapParts, player_names
from explainers.perturb import make_perturbation
from tasks.fastshap_data import detector_game, game_difference
from tasks.fastshap_train import TrainConfig, train_weights
from tasks.params import FastShapNetParams, Params
from tasks.result_store import digest

KEY = "fastshap.detector.weights"


def audited_detector(params: Params):
    """The explain stage's detector (``explain.detector``, else the first of ``infer.detectors``) on the CPU, built as
    the explain stage builds it. Raises FileNotFoundError naming a missing weights file."""
    from tasks.model_cache import detector_model

    spec = params.explain_detector()
    if spec.weights is not None and not Path(spec.weights).is_file():
        raise FileNotFoundError(f"params fastshap.detector: the audited detector's weights {spec.weights} not found "
                                f"(run the models stage first)")
    return detector_model(spec.model_dump_json(), "cpu", params.explain.chunk_size)


def guard_scorer(params: Params, net=None):
    """A D-RISE scorer of the audited detector with one placeholder target: what the explainer's guard
    fingerprints."""
    from detection.scorers import DRiseScorer

    net = net if net is not None else audited_detector(params)
    probs = torch.zeros(1, net.num_classes)
    probs[0, 0] = 1.0
    return DRiseScorer(net, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), probs)


def described_perturbation(spec, section: str = "detector") -> str:
    """``explainers.perturb``'s description of ``spec.perturbation`` (``spec``: the ``fastshap.<section>`` params).
    Raises ValueError naming ``fastshap.<section>.perturbation``."""
    try:
        return make_perturbation(spec.perturbation).describe()
    except (ValueError, KeyError) as exc:
        raise ValueError(f"params fastshap.{section}.perturbation: {exc} (got {spec.perturbation!r})") from None


def check_given(params: Params, src: str | Path) -> FastShapCheckpoint:
    """Check a given weights file (``fastshap.detector.weights``) before the stage copies it instead of training:
    the manifest beside it (if any) lists its bytes, it is a FastShapParts weights file whose players are
    :func:`~explainers.fastshap.player_names` of ``parts.grouping`` / ``parts.context`` and whose perturbation is
    ``fastshap.detector.perturbation``'s, and :class:`~explainers.fastshap.FastShapParts` accepts it for the audited
    detector's weights. Returns the checkpoint. Raises FileNotFoundError (file missing),
    ``tasks.shipped_weights.WeightsMismatchError`` (bytes differ from the manifest) and ValueError naming the key and
    the file: not a weights file, other players (``parts.grouping`` named), another perturbation, or trained for
    other detector weights (set ``weights: null`` to train one for this detector)."""
    src = Path(src)
    ckpt = given_checkpoint("detector", src, FastShapCheckpoint)
    wanted = player_names(params.parts.grouping, params.parts.context)
    if tuple(ckpt.players) != wanted:
        raise ValueError(f"params {KEY}: {src} was trained for grouping {ckpt.grouping!r} with players "
                         f"{list(ckpt.players)}, but parts.grouping {params.parts.grouping!r} (parts.context "
                         f"{params.parts.context}) gives {list(wanted)}: set parts.grouping to match it, or "
                         f"fastshap.detector.weights: null to train one")
    perturbation = described_perturbation(params.fastshap.detector)
    if ckpt.perturbation != perturbation:
        raise ValueError(f"params {KEY}: {src} was trained with perturbation {ckpt.perturbation!r}, but "
                         f"fastshap.detector.perturbation gives {perturbation!r}: set it to match, or weights: null "
                         f"to train one")
    refuse_other_game("detector", src, ckpt, params)
    refuse_unless_guard_accepts("detector", src, lambda: FastShapParts(guard_scorer(params), weights=ckpt,
                                                                       grouping=params.parts.grouping))
    return ckpt


def train_config(params: Params, spec: FastShapNetParams) -> TrainConfig:
    """``tasks.fastshap_train.TrainConfig`` of ``spec`` with ``parts.grouping``. Raises ValueError naming
    ``parts.context`` when it is false (training builds the players with the context)."""
    if not params.parts.context:
        raise ValueError("params parts.context: false, but FastShapParts training builds every pedestrian's players "
                         "with the context (tasks.fastshap_data): set parts.context: true, or give "
                         "fastshap.detector.weights")
    given = spec.model_dump(exclude={"weights"})
    return TrainConfig(grouping=params.parts.grouping,
                       **{f.name: given[f.name] for f in fields(TrainConfig) if f.name in given})


def code_digest(module: str = "tasks.fastshap_stage") -> str:
    """SHA-256 of the project modules ``module`` imports (its closure: the game, the data, the network, the
    training)."""
    from tasks.result_store import files_digest
    from tasks.stage_deps import Entry, module_closure, module_file

    return files_digest(sorted(module_file(m) for m in module_closure((Entry(module),))))


def cache_folders(params: Params, spec: FastShapNetParams) -> tuple[Path, Path]:
    """(coalition cache, training state) folders under ``fastshap.cache_dir``:
    ``coalitions-<digest>`` of everything the game values depend on (the audited detector's spec and weights file,
    the grouping, perturbation, pairs, seed and min_height, the training scenes' generator and seed, the parts
    matching, the data code; not the scene / person counts: persons come in scene order, so a cache of fewer is a
    prefix that a larger run completes) and ``train-<digest>`` of everything training depends on (that, all of
    ``spec``, the training code), so that a rerun resumes only its own configuration."""
    mspec = params.explain_detector()
    weights = file_sha256(mspec.weights) if mspec.weights and Path(mspec.weights).is_file() else None
    data = {"model": mspec.model_dump(mode="json"), "weights": weights, "seed": params.seed,
            "grouping": params.parts.grouping, "context": params.parts.context,
            "match_iou": params.parts.match_iou, "min_keypoints": params.parts.min_keypoints,
            "train_data": params.models.train_data.model_dump(mode="json", exclude={"n_images"}),
            "generator": params.pull.synthetic.model_dump(mode="json", exclude={"n_images"}),
            **spec.model_dump(mode="json", include={"perturbation", "pairs", "seed", "min_height"}),
            "code": code_digest("tasks.fastshap_data")}
    train = {**data, "spec": spec.model_dump(mode="json", exclude={"weights"}),
             "n_images": params.models.train_data.n_images, "code": code_digest()}
    root = Path(params.fastshap.cache_dir)
    return root / f"coalitions-{digest(data)[:16]}", root / f"train-{digest(train)[:16]}"


def train(params: Params, spec: FastShapNetParams, progress: bool = True) -> tuple[FastShapCheckpoint, dict]:
    """Train the network (module docstring); returns ``train_weights``' checkpoint and record. The training state
    folder serves a rerun after a crash only: it is removed once training has finished (the coalition cache is
    kept)."""
    config = train_config(params, spec)
    described_perturbation(spec)
    coalitions, state = cache_folders(params, spec)
    out = train_weights(audited_detector(params), config, params, coalitions, state, progress=progress,
                        game=detector_game(params.explain_detector()))
    shutil.rmtree(state, ignore_errors=True)
    return out


def copy_atomic(src: Path, out: Path) -> None:
    """Copy ``src`` to ``out`` through a temporary file beside it: a reader never sees half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(out)


def _provide(params: Params, section: str, what: str, out: Path | None, check, train_network) -> tuple[object, dict]:
    """The part of :func:`provide_weights` / :func:`provide_grid_weights` / :func:`provide_detector_grid_weights`
    they share: ``fastshap.<section>``'s given file checked (``check(params, src)``) and copied to ``out``, or a
    network trained (``train_network()``) and saved there; returns (the checkpoint, its record: source, the given
    file, the written file, SHA-256, the perturbation, the model weights fingerprint (12 hex), the network's weights
    digest). Raises ValueError naming the section when it is null or training fails."""
    spec = getattr(params.fastshap, section)
    if spec is None or out is None:
        raise ValueError(f"params fastshap.{section}: null (no {what} network to provide)")
    if spec.weights is not None:
        src = Path(spec.weights)
        ckpt = check(params, src)
        copy_atomic(src, out)
        record = {"source": "copied", "weights": str(src)}
    else:
        try:
            ckpt = train_network()
        except ValueError as exc:
            text = str(exc)
            raise ValueError(text if text.startswith("params ") else f"params fastshap.{section}: {text}") from None
        ckpt.save(out)
        record = {"source": "trained"}
    record.update({"file": str(Path(params.fastshap.out_dir) / out.name), "sha256": file_sha256(out),
                   "perturbation": ckpt.perturbation, "model_sha256": ckpt.model_sha256[:12],
                   "weights_sha256_12": ckpt.digest()})
    return ckpt, record


def provide_weights(params: Params, progress: bool = True) -> dict:
    """Train (``weights: null``) or verify and copy (``weights``: a file) the detector's FastShapParts weights to
    :meth:`~tasks.params.FastShapParams.weights_file`; returns its metrics record: source, file, SHA-256, grouping,
    players, perturbation, the detector weights fingerprint (12 hex), the network's weights digest, training persons,
    seconds and model forwards, and the held-out exact check (median / p90 relative L2 error, top-part agreement,
    persons), all from the file's own records (a copied file's metrics are the same bytes every run; the stage's
    wall time goes to ``metrics/timings.json``). Raises ValueError when ``fastshap.detector`` is null, and the errors
    of :func:`check_given` / ``tasks.fastshap_train.train_weights`` naming the ``fastshap`` key."""
    ckpt, record = _provide(params, "detector", "FastShapParts", params.fastshap.weights_file(), check_given,
                            lambda: train(params, params.fastshap.detector, progress)[0])
    t, h = ckpt.training, ckpt.heldout
    record.update({"grouping": ckpt.grouping, "players": list(ckpt.players), "train_persons": t.get("persons"),
                   "val_persons": t.get("val_persons"),
                   "train_scenes": t.get("scenes"), "epochs": t.get("epochs"), "best_val_loss": t.get("best_val_loss"),
                   "train_seconds": t.get("train_seconds"), "cache_seconds": t.get("cache_seconds"),
                   "train_model_forwards": t.get("model_forwards"), "heldout_persons": h.get("persons"),
                   "heldout_median_rel_l2": h.get("median_rel_l2"), "heldout_p90_rel_l2": h.get("p90_rel_l2"),
                   "heldout_top_part_agreement": h.get("top_part_agreement"),
                   "heldout_uniform_split_median_rel_l2": h.get("uniform_split_median_rel_l2"),
                   "heldout_scenes": h.get("scenes")})
    return record


def write_metrics(path: str | Path, records: dict[str, dict]) -> Path:
    """``metrics/fastshap.json``: one record per network (``detector``: :func:`provide_weights`, ``classifier``:
    :func:`provide_grid_weights`, ``detector_grid``: :func:`provide_detector_grid_weights`)."""
    from tasks.shards import write_json

    path = Path(path)
    write_json(path, records)
    return path


# ------------------------------------------------------------------------------------------- the classifier's grid
GRID_KEY = "fastshap.classifier.weights"


def audited_classifier(params: Params):
    """The audited classifier (``infer.classifier``) on the CPU, built as the explain stage builds it. Raises
    ValueError when there is none and FileNotFoundError naming a missing weights file."""
    from tasks.model_cache import classifier_model

    spec = params.infer.classifier
    if spec is None:
        raise ValueError("params fastshap.classifier: infer.classifier is null (no classifier to explain)")
    if spec.weights is not None and not Path(spec.weights).is_file():
        raise FileNotFoundError(f"params fastshap.classifier: the audited classifier's weights {spec.weights} not "
                                f"found (run the models stage first)")
    return classifier_model(spec.model_dump_json(), "cpu", params.explain.chunk_size)


def given_checkpoint(section: str, src: Path, checkpoint_cls):
    """The checkpoint of a given weights file (``fastshap.<section>.weights``): its bytes checked against the
    manifest beside it (``tasks.shipped_weights.verify_given``: FileNotFoundError, WeightsMismatchError), then read
    by ``checkpoint_cls.load`` (ValueError naming the key and the file for one that is no such file)."""
    from tasks.shipped_weights import verify_given

    key = f"fastshap.{section}.weights"
    verify_given(src, key)
    try:
        return checkpoint_cls.load(src)
    except ValueError as exc:
        raise ValueError(f"params {key}: {exc}") from None


def refuse_unless_guard_accepts(section: str, src: Path, build) -> None:
    """``build()``: the explainer on the audited model with the checkpoint of ``src``, whose guard refuses a model it
    was not trained for; its ValueError re-raised naming ``fastshap.<section>.weights``, the file and the way out
    (``weights: null`` trains one for this model)."""
    try:
        build()
    except ValueError as exc:
        raise ValueError(f"params fastshap.{section}.weights: {src}: {exc} (or set fastshap.{section}.weights: null to "
                         f"train one)") from None


def refuse_other_game(section: str, src: Path, ckpt, params: Params) -> None:
    """Raises ValueError naming ``fastshap.<section>.weights``, the file and what differs when ``ckpt`` records the
    detector game settings it was trained on (``training['detector']``) and they are not the explain detector's
    (:func:`tasks.fastshap_data.game_difference`); nothing when they match or the file records none."""
    game = game_difference(ckpt.training.get("detector"), params.explain_detector())
    if game:
        raise ValueError(f"params fastshap.{section}.weights: {src} was {game} (or set fastshap.{section}.weights: "
                         f"null)")


def refuse_other_settings(section: str, src: Path, settings) -> None:
    """Raises ValueError naming ``fastshap.<section>.weights``, the file and each setting whose trained value
    differs from the params' (``settings``: (key, the file's, the params') triples), with both values; nothing when
    all agree."""
    wrong = [(k, got, want) for k, got, want in settings if got != want]
    if wrong:
        raise ValueError(f"params fastshap.{section}.weights: {src} was trained with " +
                         ", ".join(f"{k} {g!r} (fastshap.{section}.{k}: {w!r})" for k, g, w in wrong) +
                         ": set them to match, or weights: null to train one")


def check_given_grid(params: Params, src: str | Path):
    """Check a given FastShapGrid weights file (``fastshap.classifier.weights``) before the stage copies it: the
    manifest beside it (if any) lists its bytes, it is a FastShapGrid weights file of ``fastshap.classifier``'s grid,
    perturbation and feature blocks, and :class:`~explainers.fastshap_grid.FastShapGrid`'s guard accepts it for the
    audited classifier (its weights fingerprint, class count and input size). Returns the checkpoint. Raises
    FileNotFoundError, ``tasks.shipped_weights.WeightsMismatchError`` and ValueError naming the key and the file."""
    from detection.scorers import ClassifierScorer
    from explainers.fastshap_grid import FastShapGrid, FastShapGridCheckpoint

    src = Path(src)
    spec = params.fastshap.classifier
    ckpt = given_checkpoint("classifier", src, FastShapGridCheckpoint)
    perturbation = described_perturbation(spec, "classifier")
    refuse_other_settings("classifier", src, (("grid", list(ckpt.grid), list(spec.grid)),
                                              ("perturbation", ckpt.perturbation, perturbation),
                                              ("features", list(ckpt.feature_blocks), list(spec.features))))
    model = audited_classifier(params)
    refuse_unless_guard_accepts("classifier", src, lambda: FastShapGrid(ClassifierScorer(model), weights=ckpt))
    return ckpt


def grid_cache_folders(params: Params) -> tuple[Path, Path]:
    """(coalition cache, training state) folders of the classifier's network under ``fastshap.cache_dir``:
    ``grid-coalitions-<digest>`` of what the game values depend on (the classifier's spec, weights file and its
    ``.json`` sidecar (input size, normalisation), the grid, perturbation, pairs and seed, the training scenes'
    generator and seed, the training code; not the scene count: a scene's coalitions do not depend on the others, the
    cache is keyed per scene) and ``grid-train-<digest>`` of that and every setting, so a rerun resumes only its own
    configuration."""
    spec, cspec = params.fastshap.classifier, params.infer.classifier
    files = [Path(cspec.weights), Path(cspec.weights).with_suffix(".json")] if cspec.weights else []
    weights = [file_sha256(f) if f.is_file() else None for f in files]       # the weights and their sidecar
    data = {"model": cspec.model_dump(mode="json"), "weights": weights, "seed": params.seed,
            "train_data": params.models.train_data.model_dump(mode="json", exclude={"n_images"}),
            "generator": params.pull.synthetic.model_dump(mode="json", exclude={"n_images"}),
            **spec.model_dump(mode="json", include={"grid", "perturbation", "pairs", "seed"}),
            "code": code_digest("tasks.fastshap_grid_train")}
    train = {**data, "spec": spec.model_dump(mode="json", exclude={"weights"}),
             "n_images": params.models.train_data.n_images}
    root = Path(params.fastshap.cache_dir)
    return root / f"grid-coalitions-{digest(data)[:16]}", root / f"grid-train-{digest(train)[:16]}"


def train_grid(params: Params, progress: bool = True):
    """Train the classifier's network (``tasks.fastshap_grid_train.train_grid_weights`` with
    ``fastshap.classifier``); the training state folder is removed once it has finished (the cache is kept)."""
    from tasks.fastshap_grid_train import train_grid_weights

    coalitions, state = grid_cache_folders(params)
    ckpt = train_grid_weights(audited_classifier(params), params.fastshap.classifier, params, coalitions, state,
                              progress=progress)
    shutil.rmtree(state, ignore_errors=True)
    return ckpt


# a grid network's metrics record key -> its training record's key (tasks.fastshap_grid_train.fit and the trainers)
TRAINING_RECORD = {"train_scenes": "scenes", "val_scenes": "val_scenes", "epochs": "epochs",
                   "best_val_loss": "best_val_loss", "train_seconds": "train_seconds", "cache_seconds": "cache_seconds",
                   "train_model_forwards": "model_forwards"}


def grid_record(ckpt, heldout_keys) -> dict:
    """What a grid network's metrics record reads from its weights file: its training (:data:`TRAINING_RECORD`)
    and its stored held-out check (``heldout_<key>`` for each of ``heldout_keys``, the explainer's ``HELDOUT_KEYS``;
    ``heldout_scenes``: the check's scene range). None where the file lacks a key."""
    t, h = ckpt.training, ckpt.heldout
    return {**{k: t.get(v) for k, v in TRAINING_RECORD.items()}, "heldout_scenes": h.get("scene_range"),
            **{f"heldout_{k}": h.get(k) for k in heldout_keys if k != "scenes"}}


def provide_grid_weights(params: Params, progress: bool = True) -> dict:
    """Train (``weights: null``) or verify and copy (``weights``: a file) the classifier's FastShapGrid weights to
    :meth:`~tasks.params.FastShapParams.grid_weights_file`; returns its metrics record from the file's own records:
    source, file, SHA-256, grid, perturbation, feature blocks, the classifier weights fingerprint (12 hex), the
    network's weights digest, training scenes, seconds and model forwards, and the held-out check (median deletion /
    insertion AUC of the network's maps and of RISE's at its budget, the coalition R^2, scenes). Raises ValueError
    when ``fastshap.classifier`` is null, and the errors of :func:`check_given_grid` / the training naming the key."""
    ckpt, record = _provide(params, "classifier", "FastShapGrid", params.fastshap.grid_weights_file(),
                            check_given_grid, lambda: train_grid(params, progress))
    from explainers.fastshap_grid import HELDOUT_KEYS

    record.update({"grid": list(ckpt.grid), "features": list(ckpt.feature_blocks), **grid_record(ckpt, HELDOUT_KEYS)})
    return record


# ------------------------------------------------------------------------------------------- the detector's grid
DETECTOR_GRID_KEY = "fastshap.detector_grid.weights"


def check_given_detector_grid(params: Params, src: str | Path):
    """Check a given FastShapGridDetector weights file (``fastshap.detector_grid.weights``) before the stage copies
    it: the manifest beside it (if any) lists its bytes, it is such a weights file of ``fastshap.detector_grid``'s
    grid, head layers and perturbation, trained on the explain detector's game settings where it records them
    (:func:`tasks.fastshap_data.game_difference`), and
    :class:`~explainers.fastshap_grid_detector.FastShapGridDetector`'s guard accepts it for the audited detector
    (its weights fingerprint, its head's channels). Returns the checkpoint. Raises FileNotFoundError,
    ``tasks.shipped_weights.WeightsMismatchError`` and ValueError naming the key and the file."""
    from explainers.fastshap_grid_detector import FastShapGridDetector, FastShapGridDetectorCheckpoint

    src = Path(src)
    spec = params.fastshap.detector_grid
    ckpt = given_checkpoint("detector_grid", src, FastShapGridDetectorCheckpoint)
    refuse_other_settings("detector_grid", src, (("grid", ckpt.grid, spec.grid),
                                                 ("layers", list(ckpt.layers), list(spec.layers)),
                                                 ("perturbation", ckpt.perturbation,
                                                  described_perturbation(spec, "detector_grid"))))
    refuse_other_game("detector_grid", src, ckpt, params)
    refuse_unless_guard_accepts("detector_grid", src, lambda: FastShapGridDetector(guard_scorer(params), weights=ckpt))
    return ckpt


def detector_grid_cache_folders(params: Params) -> tuple[Path, Path]:
    """(coalition cache, training state) folders of the detector's grid network under ``fastshap.cache_dir``:
    ``detector-grid-coalitions-<digest>`` of what the game values depend on (the detector's spec and weights file,
    the grid, perturbation, pairs, seed and min_height, the training scenes' generator and seed, the training code;
    not the scene count: the cache is keyed per scene) and ``detector-grid-train-<digest>`` of that and every
    setting, so a rerun resumes only its own configuration."""
    spec, mspec = params.fastshap.detector_grid, params.explain_detector()
    weights = file_sha256(mspec.weights) if mspec.weights and Path(mspec.weights).is_file() else None
    data = {"model": mspec.model_dump(mode="json"), "weights": weights, "seed": params.seed,
            "train_data": params.models.train_data.model_dump(mode="json", exclude={"n_images"}),
            "generator": params.pull.synthetic.model_dump(mode="json", exclude={"n_images"}),
            **spec.model_dump(mode="json", include={"grid", "perturbation", "pairs", "seed", "min_height"}),
            "code": code_digest("tasks.fastshap_grid_detector_train")}
    train = {**data, "spec": spec.model_dump(mode="json", exclude={"weights"})}
    root = Path(params.fastshap.cache_dir)
    return root / f"detector-grid-coalitions-{digest(data)[:16]}", root / f"detector-grid-train-{digest(train)[:16]}"


def train_detector_grid(params: Params, progress: bool = True):
    """Train the detector's grid network (``tasks.fastshap_grid_detector_train.train_detector_grid_weights`` with
    ``fastshap.detector_grid``) on the explain detector as the explain stage builds it; the file records the
    detector's game settings (:func:`tasks.fastshap_data.detector_game`) and weights path. The training state folder
    is removed once it has finished (the cache is kept)."""
    from tasks.fastshap_grid_detector_train import train_detector_grid_weights

    mspec = params.explain_detector()
    coalitions, state = detector_grid_cache_folders(params)
    ckpt = train_detector_grid_weights(audited_detector(params), params.fastshap.detector_grid, params,
                                       mspec.person_class, coalitions, state, progress=progress)
    ckpt.training.update({"weights": mspec.weights, "detector": detector_game(mspec)})
    shutil.rmtree(state, ignore_errors=True)
    return ckpt


def provide_detector_grid_weights(params: Params, progress: bool = True) -> dict:
    """Train (``weights: null``) or verify and copy (``weights``: a file) the detector's FastShapGridDetector weights
    to :meth:`~tasks.params.FastShapParams.detector_grid_weights_file`; returns its metrics record from the file's
    own records: source, file, SHA-256, grid, head layers, perturbation, the detector weights fingerprint (12 hex),
    the network's weights digest, training pedestrians, seconds and model forwards, and the held-out check (median
    deletion / insertion AUC of its maps and of D-RISE's at the check's budget on the same held-out pedestrians, the
    coalition R^2, scenes). Raises ValueError when ``fastshap.detector_grid`` is null, and the errors of
    :func:`check_given_detector_grid` / the training naming the key."""
    ckpt, record = _provide(params, "detector_grid", "FastShapGridDetector",
                            params.fastshap.detector_grid_weights_file(), check_given_detector_grid,
                            lambda: train_detector_grid(params, progress))
    from explainers.fastshap_grid_detector import HELDOUT_KEYS

    t = ckpt.training
    record.update({"grid": ckpt.grid, "layers": list(ckpt.layers), "train_pedestrians": t.get("pedestrians"),
                   "val_pedestrians": t.get("val_pedestrians"), **grid_record(ckpt, HELDOUT_KEYS)})
    return record


__all__ = ["DETECTOR_GRID_KEY", "GRID_KEY", "KEY", "audited_classifier", "audited_detector", "cache_folders",
           "check_given", "check_given_detector_grid", "check_given_grid", "code_digest", "copy_atomic",
           "described_perturbation", "detector_grid_cache_folders", "grid_cache_folders", "grid_record", "guard_scorer",
           "provide_detector_grid_weights", "provide_grid_weights", "provide_weights", "refuse_other_settings",
           "given_checkpoint", "refuse_other_game", "refuse_unless_guard_accepts",
           "TRAINING_RECORD", "train", "train_config", "train_detector_grid", "train_grid", "write_metrics"]
