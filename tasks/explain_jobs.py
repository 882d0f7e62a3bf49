"""The explainer-aware checks of params.yaml's ``explain.jobs``: the method is a name of
:data:`explainers.registry.METHODS` (a renamed one names its new name), what the method class declares holds
(``needs_regions``: regions other than ``none``; ``needs_detections``: targets other than ``classes``), each
option is typed against the method class's ``__init__`` (and the class accepts it), and a learned explainer's
(``needs_trained_weights``) trained file is there and made for the job's model (:func:`check_trained_file`).

Kept out of :mod:`tasks.params`, which every stage imports, so that only the stages that run explainers depend on
the explainers' code (tasks/stage_deps.py). The explain flow, the audit flow and ``serve`` call :func:`check_jobs`
before any work; ``make run`` calls it before ``dvc repro``.
"""
from __future__ import annotations

import inspect
import math
import types
import typing
from pathlib import Path
from typing import Any

from explainers.registry import METHODS, unknown_method, without_detections
from tasks.params import ExplainJob, ExplainParams, Params, ParamsError


class OptionError(ValueError):
    """An explainer option of the wrong type."""


def _option_types(cls: type) -> dict[str, Any]:
    """Keyword options of an explainer class -> expected type: the ``__init__`` annotation, looked up along the
    MRO through ``**kw`` (a subclass's unannotated ``perturbation="mean"`` takes the base class's annotation), else
    the type of the default; ``typing.Any`` where neither says anything."""
    found: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            break
        try:
            sig = inspect.signature(init, eval_str=True)
        except (NameError, TypeError, ValueError):       # an unresolvable annotation: fall back to defaults
            sig = inspect.signature(init)
        for name, par in list(sig.parameters.items())[1:]:         # [0] is self
            if par.kind not in (par.KEYWORD_ONLY, par.POSITIONAL_OR_KEYWORD) or name == "scorer":
                continue
            if par.annotation is not par.empty and not isinstance(par.annotation, str) and name not in found:
                found[name] = par.annotation
            if par.default is not par.empty and name not in defaults:
                defaults[name] = par.default
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break                                        # no **kw: the base's options are not reachable
    names = set(found) | set(defaults)
    return {n: found.get(n, type(defaults.get(n)) if type(defaults.get(n)) in (bool, int, float, str) else Any)
            for n in names}


def _members(annotation: Any) -> tuple:
    """The alternatives of a ``X | Y`` / ``Optional[X]`` annotation, or the annotation alone."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


_TYPE_NAMES = {bool: "a bool (true / false)", int: "an int", float: "a float", str: "a str", type(None): "null"}


def check_option(method: str, name: str, value: Any, annotation: Any) -> Any:
    """``value`` of option ``name`` of explainer ``method`` checked against its annotation, an int made a float
    where only a float is expected. Raises :class:`OptionError` naming method, option and value on a mismatch (a
    bool is not a number, a number is not a bool, a numeric string is not a number, nan / inf are no option)."""
    if annotation is Any:
        return value
    plain = [m for m in _members(annotation) if m in _TYPE_NAMES]
    if not plain:                                      # only classes YAML cannot spell: the explainer checks
        return value
    if isinstance(value, float) and not math.isfinite(value) and (float in plain or int in plain):
        raise OptionError(f"{method} option {name!r}: must be a finite number, got {value!r}")
    kind = type(value)
    if kind in plain:
        return value
    if kind is int and float in plain:
        return float(value)
    wanted = " or ".join(_TYPE_NAMES[m] for m in plain)
    raise OptionError(f"{method} option {name!r}: expected {wanted}, got {value!r} ({kind.__name__})")


def check_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options of one explain job checked against ``METHODS[method].__init__`` (see :func:`check_option`);
    returns them with ints made floats where floats are expected. Raises :class:`OptionError`."""
    types_ = _option_types(METHODS[method])
    if "chunk_size" in options:
        raise OptionError(f"{method} option 'chunk_size': set explain.chunk_size instead (images per forward pass "
                          f"of every job)")
    unknown = sorted(set(options) - set(types_))
    if unknown:
        known = sorted(set(types_) - {"chunk_size"})
        raise OptionError(f"{method} has no option among {unknown}; its options are {known}")
    return {k: check_option(method, k, v, types_[k]) for k, v in options.items()}


def capability_error(job: ExplainJob) -> str | None:
    """What the job's method class declares and the job does not give, or None: ``needs_regions`` with regions
    ``none``, ``needs_detections`` with targets ``classes``, ``needs_classes`` with other targets."""
    cls = METHODS[job.method]
    if cls.fixed_players and job.regions != "parts":
        return (f"{job.method} plays the body parts its trained file names: regions must be 'parts', got "
                f"{job.regions!r}")
    if cls.needs_regions and job.regions == "none":
        return f"{job.method} needs regions (parts, superpixels or grid), got 'none'"
    if cls.needs_detections and job.targets == "classes":
        instead = without_detections(job.method)
        return f"{job.method} explains detections: " + (f"use {instead} for classes" if instead else
                                                         "targets 'classes' have none")
    if cls.needs_classes and job.targets != "classes":
        return f"{job.method} explains classifier classes: targets must be 'classes', got {job.targets!r}"
    return None


def white_box_error(job: ExplainJob, params: Params) -> str | None:
    """A white-box method on a model that cannot serve it, or None: ``needs_gradients`` (it backpropagates) on a
    model that has none (an ONNX graph; a ``kind: callable`` detector, audited as a black box); ``needs_feature_maps``
    (it reads a PyTorch YOLO's detection head) on a detector of any other kind."""
    cls = METHODS[job.method]
    if not (cls.needs_gradients or cls.needs_feature_maps):
        return None
    what, spec = (("classifier", params.infer.classifier) if job.targets == "classes" else
                  ("detector", params.explain_detector()))
    if spec is None:
        return None
    if cls.needs_feature_maps and what == "detector" and spec.kind != "yolo":
        return (f"{job.method} needs feature maps (a white-box method: a PyTorch YOLO's detection head): the detector "
                f"{spec.id!r} is kind {spec.kind!r}; use a method that needs no feature maps, or a kind 'yolo' "
                f"detector")
    if not cls.needs_gradients or spec.kind not in (("onnx",) if what == "classifier" else ("onnx", "callable")):
        return None
    return (f"{job.method} needs gradients (a white-box method): the {what} {spec.id!r} is kind {spec.kind!r}, a "
            f"black box; use a method that needs no gradients, or an in-process PyTorch model")


def _checked_jobs(cfg: ExplainParams, origin: str, params: Params | None = None, before_stages: bool = False) -> list:
    jobs = []
    for i, job in enumerate(cfg.jobs):
        key = f"{origin}: explain.jobs[{i}]"
        if job.method not in METHODS:
            raise ParamsError(f"{key}.method: {unknown_method(job.method)}")
        try:
            options = check_options(job.method, job.options)
        except OptionError as e:
            raise ParamsError(f"{key}.options: {e} (got {job.options!r})") from None
        capability = capability_error(job)
        if capability:
            raise ParamsError(f"{key}: {capability}")
        if METHODS[job.method].needs_trained_weights:
            check_trained_file(job, options, key, params, before_stages)
        else:
            try:                               # a bad option fails here, not in every shard task of the stage
                METHODS[job.method](None, chunk_size=1, **options)
            except (TypeError, ValueError, KeyError) as e:
                raise ParamsError(f"{key}: {job.method} options {options}: {e}") from None
        jobs.append(job.model_copy(update={"options": options}))
    return jobs


def _job_scorer(job: ExplainJob, params: Params):
    """A scorer of the model a job explains (the classifier for ``classes``, else the explain stage's detector), on
    the CPU, with one placeholder target; None when the model's weights file does not exist yet (the models stage
    writes it later in the same run)."""
    import torch

    from detection.scorers import ClassifierScorer, DRiseScorer
    from tasks.model_cache import classifier_model, detector_model

    spec = params.infer.classifier if job.targets == "classes" else params.explain_detector()
    if spec is None or (spec.weights is not None and not Path(spec.weights).is_file()):
        return None
    chunk = params.explain.chunk_size
    if job.targets == "classes":
        return ClassifierScorer(classifier_model(spec.model_dump_json(), "cpu", chunk), [0], chunk_size=chunk)
    detector = detector_model(spec.model_dump_json(), "cpu", chunk)
    person = detector.class_names.index(spec.person_class) if spec.person_class in detector.class_names else 0
    probs = torch.nn.functional.one_hot(torch.tensor([person]), detector.num_classes).float()
    return DRiseScorer(detector, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), probs, chunk_size=chunk)


def _written_by_stage(path: Path, params: Params) -> bool:
    """Whether ``path`` is a trained file a pipeline stage writes (``models_rexl``: ``rexl.out_dir``;
    ``models_fastshap``: ``fastshap.out_dir``): absent before that stage has run, which is no error when the whole
    pipeline runs (``make run``, ``xai-audit audit``)."""
    written = {params.rexl.policy_file(n) for n in params.rexl.policies()} | set(params.fastshap.written_files())
    return path.resolve() in written


def _players_error(ckpt, params: Params) -> str | None:
    """For a method that plays the players its trained file names (``fixed_players``): why they are not the
    body-part players the parts stage writes (``parts.grouping``, ``parts.context``:
    :func:`explainers.fastshap.player_names`, as the models_fastshap stage's ``check_given``), or None."""
    from explainers.fastshap import player_names

    wanted = player_names(params.parts.grouping, params.parts.context)
    if tuple(ckpt.players) == wanted:
        return None
    return (f"trained for the players {list(ckpt.players)}, but parts.grouping {params.parts.grouping!r} with "
            f"parts.context {params.parts.context} gives {list(wanted)}: train one for this grouping")


def _game_error(ckpt, job: ExplainJob, params: Params) -> str | None:
    """Why a trained file's recorded detector game settings (``training['detector']``: imgsz, conf, iou, kind ...,
    :func:`tasks.fastshap_data.detector_game`) are not the explain detector's, or None (also for a file that records
    none, or a classes job)."""
    from tasks.fastshap_data import game_difference

    if job.targets == "classes":
        return None
    return game_difference(getattr(ckpt, "training", {}).get("detector"), params.explain_detector())


def check_trained_file(job: ExplainJob, options: dict[str, Any], key: str, params: Params | None,
                       before_stages: bool = False) -> None:
    """The trained file of a learned explainer's job (``needs_trained_weights``; the option its class names in
    ``trained_file_option``: RExL's ``policy``, FastSHAP's ``weights``): it must be given, exist, be such a file
    (``load_trained``), be for the body-part players the parts stage writes (``fixed_players``), and the explainer
    must accept it for the job's model (its guard: trained for these model weights). The guard needs the model: it
    runs when ``params`` are given and the model's weights exist (the explain flow always; before a first ``dvc
    repro`` only the file is checked). A file a models stage writes (``models_rexl``, ``models_fastshap``) may be
    missing while that stage has not run, and with ``before_stages`` (a check before the pipeline runs: ``make run``,
    ``xai-audit audit`` / ``serve``) an existing one is not checked either: that stage rewrites it for the params
    first (the explain flow checks it fully). A file that records the detector's game settings
    (:func:`tasks.fastshap_data.detector_game`: FastSHAP's parts and detector grid networks) must be for the explain
    detector's. ``check_weights: false`` is refused
    (the sanity check's switch, not a job's). Raises :class:`ParamsError` naming the job (``key``), the option and
    the file."""
    cls = METHODS[job.method]
    option = cls.trained_file_option
    given = options.get(option)
    if not isinstance(given, str) or not given:
        raise ParamsError(f"{key}.options.{option}: {job.method} is a learned explainer: give the file trained for "
                          f"the job's model ({cls.trained_file_hint}), got {given!r}")
    if options.get("check_weights") is False:
        raise ParamsError(f"{key}.options.check_weights: false would explain with a file trained for other weights "
                          f"without a word; only the sanity check's randomised copies switch the guard off")
    path = Path(given)
    pending = params is not None and _written_by_stage(path, params)
    if pending and (before_stages or not path.is_file()):
        return
    if not path.is_file():
        raise ParamsError(f"{key}.options.{option}: file not found (got {given!r})")
    try:
        ckpt = cls.load_trained(path)
        unfit = None if params is None else (
            (_players_error(ckpt, params) if cls.fixed_players else None) or _game_error(ckpt, job, params))
        if unfit:
            raise ValueError(unfit)
        scorer = None if params is None else _job_scorer(job, params)
        if scorer is not None:
            cls(scorer, chunk_size=1, **options)
    except (TypeError, ValueError, KeyError) as e:
        raise ParamsError(f"{key}.options.{option} ({given}): {e}") from None


def check_jobs(config: Params | ExplainParams, origin: str = "params.yaml",
               before_stages: bool = False) -> Params | ExplainParams:
    """Check every job of ``explain.jobs`` against the explainers (``config``: the whole params or their
    ``explain`` section) and return ``config`` with each job's options normalised (an int made a float where only
    a float is expected, so ``ridge: 1`` and ``ridge: 1.0`` give one config hash). Raises :class:`ParamsError`
    naming ``origin``, the job (``explain.jobs[i]``), the option and the value: an unknown or renamed method, an
    unknown or mistyped option, a method without what its class declares it needs (regions, detections), or
    options the explainer class rejects, or a learned explainer's trained file that is missing, not one, or trained
    for another model (:func:`check_trained_file`)."""
    if isinstance(config, Params):
        for i, job in enumerate(config.explain.jobs):
            refusal = white_box_error(job, config) if job.method in METHODS else None
            if refusal:
                raise ParamsError(f"{origin}: explain.jobs[{i}]: {refusal}")
        return config.model_copy(update={"explain": config.explain.model_copy(
            update={"jobs": _checked_jobs(config.explain, origin, config, before_stages)})})
    if not isinstance(config, ExplainParams):
        raise TypeError(f"check_jobs: expected Params or ExplainParams, got {type(config).__name__}")
    return config.model_copy(update={"jobs": _checked_jobs(config, origin)})


__all__ = ["OptionError", "capability_error", "check_jobs", "check_trained_file", "white_box_error", "check_option",
           "check_options"]
