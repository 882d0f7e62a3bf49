"""Scenes for guiding and re-auditing the scene classifier, rendered in memory from the synthetic generator
(``detection.datasets.synthetic``; every scene a pure function of config, seed and index):

- :func:`render_set`: images, labels, spurious-cue flags and each object's class and box, for any indices;
- :func:`decorrelated`: the generator with the cue independent of the label (``spurious.correlation`` 0.5 by
  default): what a model that reads the cue loses once the cue stops predicting the label;
- :func:`paired_probe`: the spurious-cue probe's two arms as *the same* scenes without the cue label, rendered once
  with the cue (correlation 0: the tint is always drawn when the label is absent) and once without (correlation 1).
  The generator draws the tint after everything else from the same stream, so the two renders differ by the tint
  alone: the arms are P(label | no label, cue) and P(label | no label, no cue) of ``tasks.infer.spurious_probe``
  over identical scene content.

Seeds: the audit uses ``seed`` (params.yaml), the training scenes ``seed + models.train_data.seed_offset``
(indices ``0 .. n_images − 1``); held-out sets need seeds (or indices) neither uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detection.datasets.synthetic import SyntheticConfig, _annotated, render_scene


@dataclass
class SceneSet:
    """Rendered scenes: ``images`` uint8 [N, 3, H, W], ``labels`` bool [N, C] (``class_names`` order),
    ``spurious`` bool [N], ``boxes[n]`` = (class index [K] int64, xyxy boxes [K, 4] float32) of the annotated objects
    of classes in ``class_names``, ``ids`` [N] strings, ``label_lists`` [N] the generator's label lists."""

    images: torch.Tensor
    labels: torch.Tensor
    spurious: np.ndarray
    boxes: list[tuple[np.ndarray, np.ndarray]]
    ids: list[str]
    label_lists: list[list[str]]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> list[dict]:
        """``images``-table-like rows (image_id, labels, spurious_cue) for ``tasks.infer`` quality functions."""
        return [{"image_id": i, "labels": lab, "spurious_cue": bool(s), "split": "val"}
                for i, lab, s in zip(self.ids, self.label_lists, self.spurious)]

    def subset(self, keep: np.ndarray) -> SceneSet:
        idx = np.flatnonzero(keep)
        t = torch.from_numpy(idx)
        return SceneSet(self.images[t], self.labels[t], self.spurious[idx], [self.boxes[i] for i in idx],
                        [self.ids[i] for i in idx], [self.label_lists[i] for i in idx], self.class_names)


def render_set(config: SyntheticConfig, seed: int, indices: range | list[int], class_names: list[str],
               prefix: str = "scene") -> SceneSet:
    """Render scenes ``indices`` of (config, seed) in memory. ids are ``{prefix}-{seed}-{index:06d}``."""
    index = {c: i for i, c in enumerate(class_names)}
    images, labels, spurious, boxes, ids, lists = [], [], [], [], [], []
    for i in indices:
        scene = render_scene(config, seed, i)
        image_id = f"{prefix}-{seed}-{i:06d}"
        images.append(torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1))))
        labels.append([c in scene.labels for c in class_names])
        spurious.append(scene.spurious_cue)
        objs = [o for _, o in _annotated(scene, image_id) if o.category in index]
        boxes.append((np.array([index[o.category] for o in objs], np.int64),
                      np.array([o.bbox for o in objs], np.float32).reshape(-1, 4)))
        ids.append(image_id)
        lists.append(list(scene.labels))
    H, W = config.height, config.width
    return SceneSet(torch.stack(images) if images else torch.zeros(0, 3, H, W, dtype=torch.uint8),
                    torch.tensor(labels, dtype=torch.bool).reshape(-1, len(class_names)), np.array(spurious, bool),
                    boxes, ids, lists, list(class_names))


def with_correlation(config: SyntheticConfig, correlation: float) -> SyntheticConfig:
    """``config`` with the cue's correlation replaced. Raises ValueError when the config has no cue."""
    if config.spurious is None:
        raise ValueError("pull.synthetic.spurious is null: there is no cue to decorrelate or probe")
    return config.model_copy(update={"spurious": config.spurious.model_copy(update={"correlation": correlation})})


def decorrelated(config: SyntheticConfig, seed: int, indices: range, class_names: list[str],
                 correlation: float = 0.5) -> SceneSet:
    """Scenes ``indices`` of the generator with the cue drawn with probability ``correlation`` when its label is
    present and ``1 − correlation`` otherwise (0.5: independent of the label). Raises ValueError without a cue."""
    return render_set(with_correlation(config, correlation), seed, indices, class_names, "decorrelated")


def paired_probe(config: SyntheticConfig, seed: int, indices: range, class_names: list[str]
                 ) -> tuple[SceneSet, SceneSet]:
    """The probe's arms (with cue, without cue) over the scenes among ``indices`` that lack the
    cue label: the same scenes rendered with and without the tint (module docstring). ids end in ``-cue`` / ``-nocue``.
    Raises ValueError without a cue."""
    label = config.spurious.label if config.spurious is not None else None
    with_cue = render_set(with_correlation(config, 0.0), seed, indices, class_names, "probe")
    absent = np.array([label not in lab for lab in with_cue.label_lists])
    with_cue = with_cue.subset(absent)
    without = render_set(with_correlation(config, 1.0), seed,
                         [int(i.rsplit("-", 1)[1]) for i in with_cue.ids], class_names, "probe")
    with_cue.ids = [f"{i}-cue" for i in with_cue.ids]
    without.ids = [f"{i}-nocue" for i in without.ids]
    if not (with_cue.spurious.all() and not without.spurious.any()):
        raise RuntimeError("paired_probe: the generator did not draw the cue as forced (correlation 0 / 1)")
    return with_cue, without


__all__ = ["SceneSet", "decorrelated", "paired_probe", "render_set", "with_correlation"]
