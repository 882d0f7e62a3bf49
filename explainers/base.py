"""The contract every explainer shares: ``Method(scorer, **options).explain(image, regions, budget=, seed=)`` returns
an :class:`Explanation`; the ``scorer`` is any :class:`Scorer`. Budgets are counted in forward passes (images through
the model)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from explainers.perturb import Perturbation, make_perturbation


@runtime_checkable
class Scorer(Protocol):
    """The black box every explainer queries: ``scorer(images) -> scores``, one row per image, one column per target.

    ``images``: [B, 3, H, W] float32 on ``device``, values as the model expects (explainers only blend the image with
    a baseline: its units are the model's input units); B is any count (explainers send ``chunk_size`` at a time).
    Returns ``scores`` [B, T] floating point (cast to float32 by the explainer): a classifier's class probabilities,
    a detector's D-RISE similarity to each reference detection (``detection.scorers``), or any real-valued output;
    T = ``num_targets``, fixed when the scorer is built (0 allowed: nothing to explain).

    ``device``: where images are put (explainers fall back to the CPU without it); ``num_targets``: T (without it,
    T is read from the first chunk's scores); ``chunk_size``: images per forward pass (explainers fall back to 32).
    :meth:`Explainer.explain` checks the first chunk's scores against this contract and raises :class:`ScorerError`
    naming the scorer class and the shapes."""

    device: torch.device
    num_targets: int
    chunk_size: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class ScorerError(ValueError):
    """A scorer broke the :class:`Scorer` contract (scores not [B, T]); names the scorer class and the shapes."""


@dataclass
class Explanation:
    """One image's explanation for T targets. ``relevance`` is per region when regions were given (None exactly when
    a pixel method ran without regions); both are in the scorer's units (score differences or scores)."""

    saliency: torch.Tensor                    # [T, H, W] float32, on the CPU
    relevance: torch.Tensor | None            # [T, R] float32, or None
    n_forward: int                            # model evaluations spent
    seconds: float
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    full_score: torch.Tensor | None = None    # [T] score of the unperturbed image, where the method computed it
    empty_score: torch.Tensor | None = None   # [T] score with every region hidden, where computed


class BudgetError(ValueError):
    """A method cannot run within the forward-pass budget it was given."""


class Explainer:
    """Base class: input checks, empty regions, scorers without targets, budgets, device placement, the seeded
    generator, forward counting, timing, and the shapes of what scorer and method return.

    Subclasses implement ``_explain(image, regions, budget, generator) -> (saliency, relevance, extras)`` and
    call ``self.score(images)`` for every model evaluation, so that ``n_forward`` is exact. ``_explain`` only ever
    sees non-empty regions (the players) and at least one target, with a budget of at least ``min_budget``.

    A method declares what it is in class attributes, read by params validation (``tasks.explain_jobs``), the CLI and
    the report instead of lists of method names; adding a method is its module plus one line in
    ``explainers/registry.py``.
    """

    name = "explainer"
    default_budget: int | None = None
    # players are regions (body parts, superpixels, grid): an explain job must give regions (``regions: none`` is
    # rejected) and relevance [T, R] is the method's own estimate over them; pixel-mask methods False
    needs_regions: bool = False
    # given regions, the method plays on them (relevance is its own per-region result, saliency painted from it);
    # False: regions only summarise its pixel map (relevance = the mean saliency in each). needs_regions implies it
    accepts_regions: bool = False
    needs_detections: bool = False        # the scorer must be a detection (D-RISE) scorer: no ``classes`` targets
    needs_classes: bool = False           # the scorer must be a classifier's (its ``targets``): ``classes`` only
    needs_gradients: bool = False         # white-box: backpropagates through the model (none yet)
    # white-box: reads the audited model's internal feature maps (a PyTorch YOLO's detection head), not only its
    # scores: only a ``kind: yolo`` detector can serve it (not ONNX, a callable or a torchvision detector)
    needs_feature_maps: bool = False
    needs_trained_weights: bool = False   # a learned explainer: a trained file, named by ``trained_file_option``
    shapley_values: bool = False          # relevance estimates Shapley values: efficiency holds (sum = full - empty)
    # a learned explainer's option naming its trained file (RExL: ``policy``; FastSHAP: ``weights``), and where such a
    # file comes from (the hint of the error when it is missing)
    trained_file_option: str | None = None
    trained_file_hint: str = ""
    # regions are always the players the trained file names (``players``, in its order; a body part without a pixel
    # is an empty mask, not dropped): such a method plays ``parts`` regions only, and ``self.players`` names them
    fixed_players: bool = False
    # ``explain`` also takes regions [T, R, H, W]: one set of R players per target (each pedestrian's own body parts),
    # so one call explains every target of an image and shares the forwards they have in common (the unperturbed
    # image); a method that plays each target's game separately leaves it False
    per_target_regions: bool = False

    @classmethod
    def load_trained(cls, path: str | Path) -> Any:
        """A learned explainer's trained file, read and validated (its format, version and keys), without a model.
        Raises FileNotFoundError, ValueError naming the file; TypeError for a method that is not learned."""
        raise TypeError(f"{cls.name} is not a learned explainer (needs_trained_weights is False)")

    def __init__(self, scorer, *, perturbation: str | Perturbation = "blur", chunk_size: int | None = None):
        self.scorer = scorer
        self.device = torch.device(getattr(scorer, "device", "cpu"))
        self.perturbation = make_perturbation(perturbation)
        self.chunk_size = int(chunk_size or getattr(scorer, "chunk_size", 32))
        self._forwards = 0
        self._targets: int | None = None          # T once the first chunk of an explain call is checked

    # --------------------------------------------------------------------------------------------- helpers
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Scores [B, T] of a batch already sized by the caller (one model call per chunk). The first chunk of each
        ``explain`` call is checked against the :class:`Scorer` contract (:class:`ScorerError`)."""
        self._forwards += images.shape[0]
        with torch.inference_mode():
            scores = self.scorer(images)
        if self._targets is None:
            self._targets = self._check_scores(images, scores)
        return scores.float()

    def _check_scores(self, images: torch.Tensor, scores: Any) -> int:
        """T of the scorer's first chunk; raises :class:`ScorerError` unless scores are a tensor [B, T] with B the
        images' count and T its ``num_targets`` (where it has one)."""
        expected = getattr(self.scorer, "num_targets", None)
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else None
        if shape is None or len(shape) != 2 or shape[0] != images.shape[0] or expected not in (None, shape[1]):
            got = f"{shape}" if shape is not None else f"a {type(scores).__name__}"
            raise ScorerError(f"{self.name}: scorer {type(self.scorer).__name__} returned {got} for images "
                              f"{tuple(images.shape)}; a Scorer returns scores [B, T] = [{images.shape[0]}, "
                              f"{'T' if expected is None else expected}] (one row per image, one column per target)")
        return shape[1]

    def options(self) -> dict[str, Any]:
        """The method's settings, recorded in every Explanation (and hashed by the pipeline)."""
        return {"perturbation": self.perturbation.describe()}

    def default_regions(self, image: torch.Tensor) -> torch.Tensor | None:
        """The players when ``explain`` is given no regions: None for pixel methods (superpixels for region games)."""
        return None

    def min_budget(self, num_regions: int | None, num_targets: int | None) -> tuple[int, str]:
        """The fewest forwards the method runs on for this many players (None: pixel saliency) and targets, and
        what they are spent on."""
        return 1, "one image"

    # --------------------------------------------------------------------------------------------- contract
    def explain(self, image: torch.Tensor, regions: torch.Tensor | None = None, *, budget: int | None = None,
                seed: int = 0) -> Explanation:
        """Explain ``image`` [3, H, W] (values as the scorer expects) for all of the scorer's targets.

        ``regions``: a stack [R, H, W] of masks (bool, or float weights >= 0) or an integer label map [H, W]
        (labels 0..R-1 with R = max label + 1; negative labels are pixels outside every region). Regions without a
        pixel (a label id that does not occur, an all-zero mask) are not players: the method runs on the others,
        spends nothing on them, and their column of ``relevance`` [T, R] is exactly 0, so column r is always region
        (label) r. Without regions, region games use their ``default_regions`` (superpixels). A method with
        ``per_target_regions`` also takes a stack [T, R, H, W]: target t plays on its own masks ``regions[t]`` (a mask
        without a pixel is a dummy player of that target: relevance exactly 0); T must be the scorer's targets, and
        ``budget`` and ``min_budget`` (asked for one target) count forwards per target (the call spends at most
        budget x T).

        A scorer with ``num_targets == 0`` (e.g. a detector that found nothing on the image) gives an Explanation of
        no targets: saliency [0, H, W], relevance [0, R] (None for pixel methods), no forwards.

        Returns saliency [T, H, W] and relevance [T, R] (None for a pixel method without regions), in the scorer's
        units, with the forwards spent (``n_forward`` <= budget; <= budget x T with per-target regions) and the
        seconds they took.

        Raises ValueError for an image that is not [3, H, W] with H, W >= 1 or has a non-finite value (NaN, inf),
        regions of the wrong shape, with negative or non-finite weights, or with no pixel at all; BudgetError (a
        ValueError) for a budget below ``min_budget`` (naming the method, the number of players and the minimum);
        ScorerError (a ValueError) when the scorer's first chunk of scores is not [B, T] (naming the scorer class and
        the shapes); AssertionError when the method itself returns the wrong shapes or overspends (a bug, never a user
        error)."""
        if image.ndim != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
            raise ValueError(f"image must be [3, H, W] with H, W >= 1, got {tuple(image.shape)}")
        image = image.to(self.device, torch.float32)
        refuse_non_finite(image)
        budget = self.default_budget if budget is None else int(budget)
        if budget is not None and budget < 1:
            raise BudgetError(f"{self.name}: budget must be a positive number of forward passes, got {budget}")
        regions = self.default_regions(image) if regions is None else regions
        T = getattr(self.scorer, "num_targets", None)
        if regions is not None and torch.as_tensor(regions).ndim == 4:
            players = self._target_region_set(regions, image.shape[-2:], T)
        else:
            players = None if regions is None else region_set(regions, image.shape[-2:], self.device)
        options = {**self.options(), "budget": budget, "seed": int(seed)}
        if T == 0:
            H, W = image.shape[-2:]
            return Explanation(saliency=torch.zeros(0, H, W), relevance=None if players is None else
                               torch.zeros(0, players.count), n_forward=0, seconds=0.0, method=self.name,
                               options=options)
        M = None if players is None else players.num_players
        each = players is not None and players.masks.ndim == 4          # per-target regions: budgets per target
        minimum, spent_on = self.min_budget(M, 1 if each else T)
        if budget is not None and budget < minimum:
            what = self.name if M is None else f"{self.name} with {M} region{'s' if M != 1 else ''}"
            raise BudgetError(f"{what} needs at least {minimum} forwards ({spent_on}), got budget {budget}")
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self._forwards, self._targets = 0, None
        start = time.perf_counter()
        saliency, relevance, extras = self._explain(image, None if players is None else players.masks, budget,
                                                    generator)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        limit = budget * players.masks.shape[0] if budget is not None and each else budget
        if limit is not None and self._forwards > limit:          # a bug in a method, never a user error
            raise AssertionError(f"{self.name} spent {self._forwards} forwards, budget {limit}")
        self._check_outputs(saliency, relevance, extras, image, players)
        if relevance is not None and players is not None:
            relevance = players.scatter(relevance)
        return Explanation(saliency=saliency.float().cpu(), relevance=None if relevance is None else
                           relevance.float().cpu(), n_forward=self._forwards, seconds=seconds, method=self.name,
                           options=options, **{k: v.float().cpu() for k, v in extras.items()})

    def _check_outputs(self, saliency: torch.Tensor, relevance: torch.Tensor | None, extras: dict[str, torch.Tensor],
                       image: torch.Tensor, players: RegionSet | None) -> None:
        """What ``_explain`` returned, against the contract: saliency [T, H, W], relevance [T, n players] exactly
        when there are players, each extra score [T]. A mismatch is a bug in the method (AssertionError)."""
        T = self._targets if self._targets is not None else getattr(self.scorer, "num_targets", None)
        H, W = image.shape[-2:]
        wrong = []
        if tuple(saliency.shape) != (T, H, W):
            wrong.append(f"saliency {tuple(saliency.shape)}, expected {(T, H, W)}")
        n = None if players is None else players.num_players
        if (relevance is None) != (n is None) or (n is not None and tuple(relevance.shape) != (T, n)):
            got = None if relevance is None else tuple(relevance.shape)
            wrong.append(f"relevance {got}, expected {None if n is None else (T, n)}")
        wrong += [f"{k} {tuple(v.shape)}, expected {(T,)}" for k, v in extras.items() if tuple(v.shape) != (T,)]
        if wrong:
            raise AssertionError(f"{self.name} returned " + "; ".join(wrong))

    def _target_region_set(self, regions: torch.Tensor, size: tuple[int, int], T: int | None) -> RegionSet:
        """Per-target regions [T, R, H, W] as players (:func:`target_region_set`); ValueError when the method
        does not take them or T is not the scorer's number of targets."""
        if not self.per_target_regions:
            raise ValueError(f"{self.name}: regions {tuple(torch.as_tensor(regions).shape)} give each target its own "
                             "players, which this method does not take: give one stack [R, H, W] for all targets")
        players = target_region_set(regions, size, self.device)
        if T is not None and players.masks.shape[0] != T:
            raise ValueError(f"{self.name}: regions [T, R, H, W] hold {players.masks.shape[0]} targets' players, "
                             f"the scorer has {T} targets")
        return players

    def _explain(self, image, regions, budget, generator):
        raise NotImplementedError


def numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A NumPy generator seeded from the explainer's torch generator (coalitions are drawn on the CPU)."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device)))


@dataclass
class RegionSet:
    """The regions given to ``explain``: the non-empty ones are the players."""

    masks: torch.Tensor        # [n, H, W] float: the players, each with some pixel > 0 (per target: [T, R, H, W])
    columns: torch.Tensor      # [n] long: each player's column in relevance [T, R] (its label id or stack index)
    count: int                 # R: the label map's max label + 1, or the stack's length

    @property
    def num_players(self) -> int:
        """n: the players' count (per-target regions: R, each target's own masks)."""
        return self.masks.shape[-3]

    def scatter(self, relevance: torch.Tensor) -> torch.Tensor:
        """The players' relevance [T, n] in the R columns [T, R]; regions without a pixel get exactly 0."""
        if self.num_players == self.count:
            return relevance
        out = relevance.new_zeros(relevance.shape[0], self.count)
        return out.index_copy_(1, self.columns.to(relevance.device), relevance)


def region_set(regions: torch.Tensor, size: tuple[int, int], device: torch.device | str = "cpu") -> RegionSet:
    """Regions as players: a bool/float stack [R, H, W] (weights >= 0), or an integer label map [H, W] (labels
    0..R-1, R = max label + 1; negative labels are pixels outside every region). Masks are only built for label ids
    that occur, so a sparse label map costs no memory for its gaps. Raises ValueError for the wrong shape, negative
    or non-finite weights, or no region with a pixel."""
    regions = torch.as_tensor(regions, device=device)
    if regions.ndim == 2 and not regions.dtype.is_floating_point and regions.dtype != torch.bool:
        if tuple(regions.shape) != tuple(size):
            raise ValueError(f"regions: label map {tuple(regions.shape)} does not match the image {tuple(size)}")
        labels = regions.long()
        ids = torch.unique(labels)
        ids = ids[ids >= 0]
        if ids.numel() == 0:
            raise ValueError("regions: the label map has no label >= 0 (every pixel is outside every region)")
        masks = (labels.unsqueeze(0) == ids.view(-1, 1, 1)).float()
        return RegionSet(masks, ids, int(ids[-1]) + 1)
    if regions.ndim != 3 or tuple(regions.shape[-2:]) != tuple(size):
        raise ValueError(f"regions must be [R, H, W] masks or an [H, W] label map matching the image {tuple(size)}, "
                         f"got {tuple(regions.shape)}")
    R = regions.shape[0]
    if R == 0:
        raise ValueError("regions: at least one region is needed, got an empty stack [0, H, W]")
    masks = regions.float()
    if regions.dtype.is_floating_point and not bool((torch.isfinite(masks) & (masks >= 0)).all()):
        raise ValueError("regions: mask weights must be finite and >= 0, got "
                         f"min {float(masks.nan_to_num(0).min()):.3g} and {int((~torch.isfinite(masks)).sum())} "
                         "non-finite values")
    keep = masks.reshape(R, -1).amax(1) > 0
    columns = keep.nonzero()[:, 0]
    if columns.numel() == 0:
        raise ValueError(f"regions: all {R} regions are empty (no pixel with a weight > 0): nothing to attribute")
    return RegionSet(masks if columns.numel() == R else masks[columns], columns, R)


def target_region_set(regions: torch.Tensor, size: tuple[int, int], device: torch.device | str = "cpu") -> RegionSet:
    """Per-target regions [T, R, H, W] (bool, or float weights >= 0) as players: every one of the R columns is
    kept (a mask without a pixel is that target's dummy player), masks [T, R, H, W] as given (bool stays bool: a
    method converts one target's masks at a time, so memory does not grow T-fold in float; other dtypes become
    float). Raises ValueError for the wrong shape, negative or non-finite weights, no region, or a target none of
    whose masks has a pixel (naming the targets)."""
    regions = torch.as_tensor(regions, device=device)
    if regions.ndim != 4 or tuple(regions.shape[-2:]) != tuple(size) or regions.shape[1] == 0:
        raise ValueError(f"per-target regions must be [T, R, H, W] masks with R >= 1 matching the image "
                         f"{tuple(size)}, got {tuple(regions.shape)}")
    masks = regions if regions.dtype == torch.bool else regions.float()
    if regions.dtype.is_floating_point and not bool((torch.isfinite(masks) & (masks >= 0)).all()):
        raise ValueError("regions: mask weights must be finite and >= 0, got "
                         f"min {float(masks.nan_to_num(0).min()):.3g} and {int((~torch.isfinite(masks)).sum())} "
                         "non-finite values")
    blank = (~has_pixel(masks.flatten(2), (1, 2))).nonzero()[:, 0].tolist()
    if blank:
        raise ValueError(f"regions: target(s) {blank} have no region with a pixel: nothing to attribute")
    R = regions.shape[1]
    return RegionSet(masks, torch.arange(R, device=masks.device), R)


def as_region_masks(regions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Regions as a float stack [R, H, W] with one mask per column of relevance (empty ones included): accepts a
    boolean/float stack or an integer label map [H, W] (see :func:`region_set`)."""
    players = region_set(regions, size)
    out = players.masks.new_zeros(players.count, *players.masks.shape[1:])
    return out.index_copy_(0, players.columns, players.masks)


def has_pixel(masks: torch.Tensor, dim: int | tuple[int, ...]) -> torch.Tensor:
    """Whether ``masks`` (bool, integer, or float weights) have a pixel > 0 along ``dim`` -> bool tensor. Bool masks
    are read as bytes (``amax``: on the CPU ~25x faster than ``Tensor.any``, which dominated the per-image set-up of
    one-forward explainers); float masks as ``(masks > 0).any(dim)`` (a NaN weight is no pixel and hides none)."""
    if masks.numel() == 0 or masks.dtype.is_floating_point:
        return (masks > 0).any(dim)                      # amax cannot reduce an empty dimension
    return (masks.view(torch.uint8) if masks.dtype == torch.bool else masks).amax(dim) > 0


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bounding boxes [..., 4] as (y1, y2, x1, x2) (rows y1..y2 - 1, columns x1..x2 - 1, long) of the union of each
    stack of masks [..., R, H, W] (its pixels > 0, :func:`has_pixel`); a stack without a pixel (or an image with no
    row or column) gets (0, 0, 0, 0). One pass over the masks, no loop: per-target work (painting, crops, empty
    coalitions) then touches only each target's box, not the whole image."""
    if masks.shape[-1] == 0 or masks.shape[-2] == 0:
        return torch.zeros(*masks.shape[:-3], 4, dtype=torch.long, device=masks.device)
    union = has_pixel(masks, -3)                                                  # [..., H, W]

    def span(inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, has = inside.shape[-1], inside.any(-1)
        first = inside.to(torch.uint8).argmax(-1)
        end = n - inside.flip(-1).to(torch.uint8).argmax(-1)
        return torch.where(has, first, 0), torch.where(has, end, 0)

    (y1, y2), (x1, x2) = span(has_pixel(union, -1)), span(has_pixel(union, -2))
    return torch.stack([y1, y2, x1, x2], -1)


def paint(relevance: torch.Tensor, regions: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
    """Region relevance [T, R] onto pixels -> [T, H, W] with one matrix product (per-target regions
    [T, R, H, W]: float32 maps, target t painted with its own masks inside their bounding box ``boxes[t]``
    (:func:`mask_boxes`, computed when not given); 0 outside it, where no mask has a pixel)."""
    if regions.ndim == 4:                    # one target at a time: bool masks are made float per target only
        T, R, H, W = regions.shape
        out = torch.zeros(T, H, W, device=relevance.device)
        for t, (y1, y2, x1, x2) in enumerate((mask_boxes(regions) if boxes is None else boxes).tolist()):
            box = regions[t, :, y1:y2, x1:x2].reshape(R, (y2 - y1) * (x2 - x1))
            out[t, y1:y2, x1:x2] = (relevance[t].float() @ box.float()).reshape(y2 - y1, x2 - x1)
        return out
    R, H, W = regions.shape
    return (relevance @ regions.reshape(R, H * W)).reshape(-1, H, W)


def refuse_non_finite(image: torch.Tensor) -> None:
    """ValueError naming the count when ``image`` has a NaN or inf value: a model's score of such pixels is no
    evidence of anything, and every method would turn it into a map of NaNs or numbers the model never meant."""
    finite = torch.isfinite(image)
    if not bool(finite.all()):
        raise ValueError(f"image has {int((~finite).sum())} non-finite values (NaN or inf) of {image.numel()}: "
                         "nothing to explain (decode or normalise it again)")


def region_means(saliency: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Mean saliency inside each region: [T, H, W] x [R, H, W] -> [T, R] (0 for empty regions); per-target regions
    [T, R, H, W]: target t's map over its own regions."""
    if regions.ndim == 4:                    # one target at a time, inside its masks' bounding box (mask_boxes)
        T, R = regions.shape[:2]
        out = []
        for t, (y1, y2, x1, x2) in enumerate(mask_boxes(regions).tolist()):
            flat = regions[t, :, y1:y2, x1:x2].reshape(R, (y2 - y1) * (x2 - x1)).to(saliency)
            out.append((flat @ saliency[t, y1:y2, x1:x2].reshape(-1)) / flat.sum(1).clamp_min(1))
        return torch.stack(out) if out else saliency.new_zeros(0, R)
    R = regions.shape[0]
    flat = regions.reshape(R, -1)
    return (saliency.reshape(saliency.shape[0], -1) @ flat.T) / flat.sum(1).clamp_min(1)
