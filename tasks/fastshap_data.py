"""Training data of FastShapParts (``explainers.fastshap``): training-split persons, Shapley-kernel coalitions and
their cached game values.

Persons: the detector's person detections on the *training* scenes (rendered by the generator of ``params.yaml``'s
``pull.synthetic`` with seed ``seed + models.train_data.seed_offset``, the scenes the demo models were trained on;
never the audited / val scenes) that match a ground-truth person with keypoints (box IoU >= ``parts.match_iou``) at
least ``min_height`` px tall: its players are the grouping's parts built from the ground-truth keypoints over the
detection's box (source ``gt``, as the parts stage builds them) plus the context; its value is the D-RISE similarity
to the detection, the game blur-hiding a player (exactly the explain stage's game).

Coalitions: per person, ``pairs`` coalitions of its n players with a pixel drawn from the Shapley kernel (size k with
probability proportional to 1 / (k (n - k)), members uniform) each followed by its complement (paired sampling),
plus the empty and the full coalition; drawn from a generator seeded by (seed, scene, person within the scene), so a
person's coalitions do not depend on which other persons were drawn or on a resume. Values are computed in batched
chunks by :class:`~explainers.game.RegionGame` (black box: forwards only) and cached as Parquet, one file per block
of persons (``block-00000.parquet``, written atomically) beside a ``manifest.json`` of what they were computed for; a
rerun reuses finished blocks and computes the rest, so an interrupted build resumes to the same rows.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from explainers.game import RegionGame
from explainers.perturb import Perturbation
from explainers.shapley import _paired_draws, kernel_size_mass

KINDS = ("empty", "full", "pair")


def detector_game(spec) -> dict:
    """The settings of a detector spec (``detection.models.specs.DetectorSpec``) that define its pedestrians' game
    beside its weights: kind, input size, thresholds, person class, architecture / decoding (not its id, weights
    path or keypoint model). A FastShapParts file records them (``training['detector']``) and the explain checks
    compare them (a network trained on one game explains another badly without a word otherwise)."""
    return spec.model_dump(mode="json", exclude={"id", "weights", "keypoints"})


def game_difference(trained: dict | None, spec) -> str | None:
    """Why a file trained on a detector game with settings ``trained`` (:func:`detector_game`; None: not recorded)
    does not fit the detector ``spec``, naming each differing setting on both sides; None when they agree."""
    if trained is None:
        return None
    now = detector_game(spec)
    differ = sorted(k for k in set(trained) | set(now) if trained.get(k) != now.get(k))
    if not differ:
        return None
    return (f"trained on the game of a detector with {', '.join(f'{k}={trained.get(k)!r}' for k in differ)}, but "
            f"infer.detectors {spec.id!r} has {', '.join(f'{k}={now.get(k)!r}' for k in differ)}: train one for "
            f"these settings")


@dataclass
class Person:
    """One player set and its game: ``masks`` [P, H, W] bool in the players' order (empty for a missing part),
    ``scorer`` the value's black box (one target), ``image`` [3, H, W] in the scorer's units."""

    person_id: str
    scene: int
    index: int                     # the person's position within its scene (seeds its coalitions)
    image: torch.Tensor
    masks: torch.Tensor
    scorer: Callable[[torch.Tensor], torch.Tensor]

    @property
    def present(self) -> np.ndarray:
        """Indices of the players with a pixel."""
        return np.flatnonzero(self.masks.reshape(self.masks.shape[0], -1).any(1).cpu().numpy())


def kernel_pairs(n: int, pairs: int, rng: np.random.Generator) -> np.ndarray:
    """``pairs`` coalitions [2 * pairs, n] (0/1) of n >= 2 players from the Shapley kernel, each followed by its
    complement. Raises ValueError for n < 2 (no coalition strictly between empty and full)."""
    if n < 2:
        raise ValueError(f"fastshap: kernel coalitions need >= 2 players, got {n}")
    mass = kernel_size_mass(n)[1:n]
    return _paired_draws(n, np.arange(1, n), mass / mass.sum(), 2 * pairs, rng)


def person_coalitions(person: Person, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kind [K] str, coalitions [K, P] 0/1 over all P players) of a person: empty, full, then its kernel pairs over
    the players with a pixel (none for a person with fewer than 2)."""
    P = person.masks.shape[0]
    present = person.present
    rng = np.random.default_rng([seed, person.scene, person.index])
    rows = [np.zeros(P), np.zeros(P)]
    rows[1][present] = 1
    kinds = ["empty", "full"]
    if len(present) >= 2:
        drawn = kernel_pairs(len(present), pairs, rng)
        full = np.zeros((len(drawn), P))
        full[:, present] = drawn
        rows += list(full)
        kinds += ["pair"] * len(drawn)
    return np.asarray(kinds), np.stack(rows).astype(np.float32)


def coalition_codes(Z: np.ndarray) -> np.ndarray:
    """0/1 coalitions [K, P] -> int64 bit codes (bit i = player i)."""
    return (Z.astype(np.int64) << np.arange(Z.shape[1])).sum(1)


def code_coalitions(codes: np.ndarray, P: int) -> np.ndarray:
    """The inverse of :func:`coalition_codes`: [K] -> [K, P] float32."""
    return ((np.asarray(codes, np.int64)[:, None] >> np.arange(P)) & 1).astype(np.float32)


def evaluate_person(person: Person, coalitions: np.ndarray, perturbation: Perturbation,
                    chunk_size: int) -> np.ndarray:
    """The person's game on coalitions [K, P] -> values [K] float64 (forwards only, in chunks of ``chunk_size``)."""
    present = person.present
    if len(present) == 0:
        return np.zeros(len(coalitions))
    device = person.image.device
    game = RegionGame(person.scorer, person.image, person.masks[present].float().to(device), perturbation,
                      chunk_size)
    with torch.inference_mode():
        z = torch.from_numpy(coalitions[:, present]).to(device)
        return game(z)[:, 0].double().cpu().numpy()


def person_rows(person: Person, pairs: int, seed: int, perturbation: Perturbation, chunk_size: int) -> dict:
    """The cache rows of one person (columns of :func:`CoalitionCache` blocks)."""
    kinds, Z = person_coalitions(person, pairs, seed)
    values = evaluate_person(person, Z, perturbation, chunk_size)
    K = len(Z)
    return {"person_id": [person.person_id] * K, "scene": [person.scene] * K, "index": [person.index] * K,
            "kind": kinds.tolist(), "coalition": coalition_codes(Z).tolist(), "value": values.tolist()}


class CoalitionCache:
    """Parquet blocks of game values under ``directory`` (module docstring). ``spec``: what the values were computed
    for (model fingerprint, players, perturbation, pairs, seed, persons' source); a directory holding another spec is
    refused (ValueError naming the differing keys) rather than mixed. ``key``: the items' attribute (and the rows'
    column) naming an item (a person's ``person_id``; a scene's ``scene_id`` for ``tasks.fastshap_grid_train``)."""

    def __init__(self, directory: str | Path, spec: dict, block: int = 32, key: str = "person_id"):
        self.directory = Path(directory)
        self.spec = {**spec, "block": int(block)}
        self.block = int(block)
        self.key = key

    def _check_manifest(self) -> None:
        path = self.directory / "manifest.json"
        if path.is_file():
            old = json.loads(path.read_text())
            differ = sorted(k for k in set(old) | set(self.spec) if old.get(k) != self.spec.get(k))
            if differ:
                raise ValueError(f"fastshap: coalition cache {self.directory} was built for another setting "
                                 f"({', '.join(f'{k}: {old.get(k)!r} != {self.spec.get(k)!r}' for k in differ)}); "
                                 "use another directory or delete it")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.spec, indent=1, sort_keys=True) + "\n")

    def block_path(self, b: int) -> Path:
        return self.directory / f"block-{b:05d}.parquet"

    def build(self, persons: Iterable, perturbation: Perturbation, chunk_size: int = 34,
              limit: int | None = None, progress: bool = False, rows_of: Callable[[Any], dict] | None = None) -> int:
        """Evaluate the coalitions of ``persons`` (at most ``limit``), block by block; items already in a block on
        disk are not evaluated again (a partial last block is completed, its rows kept first). ``rows_of``: an
        item's rows (columns -> lists, ``key`` among them); default :func:`person_rows` of a :class:`Person` with the
        spec's pairs and seed. Returns the number of items iterated."""
        from tqdm import tqdm
        self._check_manifest()
        pairs, seed = int(self.spec["pairs"]), int(self.spec["seed"])
        if rows_of is None:
            def rows_of(person: Person) -> dict:
                return person_rows(person, pairs, seed, perturbation, chunk_size)
        current, existing, rows = None, None, {}
        count = 0
        bar = tqdm(total=limit, desc="coalitions", unit="person", disable=not progress)
        for count, person in enumerate(_take(persons, limit), start=1):
            b = (count - 1) // self.block
            if b != current:
                self._flush(current, existing, rows)
                path = self.block_path(b)
                current, existing, rows = b, pq.read_table(path) if path.is_file() else None, {}
                done = set() if existing is None else set(existing.column(self.key).to_pylist())
            if getattr(person, self.key) not in done:
                for key, values in rows_of(person).items():
                    rows.setdefault(key, []).extend(values)
            bar.update(1)
        self._flush(current, existing, rows)
        bar.close()
        return count

    def _flush(self, b: int | None, existing: pa.Table | None, rows: dict[str, list]) -> None:
        """Write block ``b`` (its rows on disk, then ``rows``) atomically; nothing when there is nothing new."""
        if b is None or not rows:
            return
        table = pa.table(rows)
        if existing is not None:
            table = pa.concat_tables([existing, table.cast(existing.schema)])
        path = self.block_path(b)
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)

    def read(self) -> pa.Table:
        """Every cached row, blocks in order. Raises FileNotFoundError when nothing is cached."""
        files = sorted(self.directory.glob("block-*.parquet"))
        if not files:
            raise FileNotFoundError(f"fastshap: no coalition blocks under {self.directory}")
        return pa.concat_tables([pq.read_table(f) for f in files])


def _take(items: Iterable, limit: int | None) -> Iterator:
    for k, item in enumerate(items):
        if limit is not None and k >= limit:
            return
        yield item


def targets_by_person(table: pa.Table, P: int) -> dict[str, dict]:
    """Per person id: ``full``, ``empty`` (floats), ``Z`` [K, P] float32 and ``y`` [K] = v(S) - v(none) of its pairs."""
    out: dict[str, dict] = {}
    d = table.to_pydict()
    for pid, kind, code, value in zip(d["person_id"], d["kind"], d["coalition"], d["value"]):
        rec = out.setdefault(pid, {"codes": [], "values": []})
        if kind in ("full", "empty"):
            rec[kind] = value
        else:
            rec["codes"].append(code)
            rec["values"].append(value)
    for rec in out.values():
        rec["Z"] = code_coalitions(np.asarray(rec.pop("codes"), np.int64), P)
        rec["y"] = np.asarray(rec.pop("values"), np.float64) - rec["empty"]
    return out


# ------------------------------------------------------------------------------------------- training persons
def training_persons(detector, scenes: Iterable[int], grouping: str = "parts10", min_height: float = 60.0,
                     params=None) -> Iterator[Person]:
    """The persons of the training scenes ``scenes`` (indices), in scene order (module docstring)."""
    from detection.datasets.imageio import to_batch
    from detection.datasets.synthetic import render_scene, scene_rows
    from detection.evaluation import iou_matrix
    from detection.parts import Keypoints, PartsError, body_parts
    from detection.scorers import DRiseScorer
    from tasks.params import load_params

    params = params or load_params(check_files=False)
    cfg, seed = params.pull.synthetic, params.seed + params.models.train_data.seed_offset
    person_class = detector.class_names.index("person") if "person" in detector.class_names else 0
    for index in scenes:
        scene = render_scene(cfg, seed, index)
        annotations, _ = scene_rows(scene, f"train{seed}-{index:06d}")
        tall = [a for a in annotations if a["category"] == "person" and a["keypoints"] is not None
                and a["bbox"][3] - a["bbox"][1] >= min_height]
        if not tall:
            continue
        image = to_batch([scene.image])[0].to(detector.device)
        dets = detector.detect(image[None])[0]
        keep = (dets.labels == person_class).nonzero()[:, 0]
        if len(keep) == 0:
            continue
        ious = iou_matrix(np.array([a["bbox"] for a in tall], float), dets.boxes[keep].cpu().numpy().astype(float))
        used: set[int] = set()
        H, W = image.shape[-2:]
        for k, person in enumerate(tall):
            j = int(np.argmax(ious[k]))
            kps = Keypoints.from_coco(person["keypoints"])
            if ious[k, j] < params.parts.match_iou or j in used or kps.count < params.parts.min_keypoints:
                continue
            d = int(keep[j])
            try:
                parts = body_parts(kps, dets.boxes[d].tolist(), (H, W), "gt").grouped(grouping, context=True)
            except PartsError:
                continue
            used.add(j)
            probs = dets.class_probs[d:d + 1] if dets.class_probs is not None else \
                torch.nn.functional.one_hot(dets.labels[d:d + 1], detector.num_classes).float()
            scorer = DRiseScorer(detector, dets.boxes[d:d + 1], probs, chunk_size=34)
            yield Person(f"{index:06d}/{person['ann_id']}", index, k, image,
                         torch.from_numpy(parts.full()).to(image.device), scorer)
