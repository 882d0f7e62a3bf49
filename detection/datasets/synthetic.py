"""Procedural street scenes with articulated pedestrians and exact ground truth.

Each pedestrian is a 2-D articulated figure posed by forward kinematics (yaw, walking phase, arm swing, waving)
with the 17 COCO keypoints and an exact mask for each of the 10 body parts, both *amodal* (the whole part, clipped
to the image) and *visible* (what is left after occlusion by nearer people and objects). Scenes vary pedestrian
size (perspective: far = small, near the horizon), occlusion, truncation at the borders, clothing, textured
backgrounds, and distractors (cars, bicycles, poles). A scene-level multi-label set (which object kinds are
visible) feeds the classifier, and an optional spurious cue (a background tint correlated with one label) gives
an audit something true to find. An optional *planted* part (off by default) gives one at the body-part level: every
annotated pedestrian has that part painted in one colour, and unannotated *decoys* (the same figures without it)
stand among them, so that a detector trained on such scenes must look at the part to tell persons from decoys.

Everything is a pure function of ``(config, seed, index)``: images can be generated in any order, in parallel,
and always come out bit-identical.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from detection.body import BODY_PARTS, KP, NUM_KEYPOINTS, PART_KEYPOINTS
from detection.masks import rle_encode

CATEGORIES: tuple[str, ...] = ("person", "bicycle", "car", "pole")
DECOY = "decoy"                 # planted scenes' unannotated person figures (PlantedPart): never a label or annotation
_SHIFT = 4                      # cv2 fixed-point bits: sub-pixel accurate shapes
_SCALE = 1 << _SHIFT
_MIN_VISIBLE_AREA = 10          # objects with fewer visible pixels get no annotation and no scene label
# For each keypoint, the body parts it belongs to: it is visible when one of them owns its pixel.
_PARTS_OF_KEYPOINT: dict[int, tuple[int, ...]] = {
    k: tuple(BODY_PARTS.index(part) for part, kps in PART_KEYPOINTS.items() if name in kps)
    for name, k in KP.items()
}


def _is_rgb(colour: Sequence[int]) -> bool:
    """Every channel in 0..255."""
    return all(0 <= c <= 255 for c in colour)


class SpuriousCue(BaseModel):
    """A background tint that co-occurs with ``label``: P(tint | label) = correlation, P(tint | no label) = 1 - it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str = "bicycle"
    correlation: float = Field(default=0.9, ge=0.5, le=1.0)
    tint: tuple[int, int, int] = (255, 150, 60)
    strength: float = Field(default=0.3, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _known_label(self) -> SpuriousCue:
        if self.label not in CATEGORIES:
            raise ValueError(f"label {self.label!r} is not one of {list(CATEGORIES)}")
        if not _is_rgb(self.tint):
            raise ValueError(f"tint {self.tint} must be RGB values in 0..255")
        return self


class PlantedPart(BaseModel):
    """A known reliance at the body-part level (issue 21): every annotated pedestrian has body part ``part`` (one of
    ``detection.body.BODY_PARTS``) painted in ``colour`` (RGB 0..255) over exactly that part's mask, and *decoys*,
    person figures drawn by the same :func:`person_shape` but without the plant, stand in the scene unannotated
    (category ``decoy``: no annotation, no scene label, rendered as background). ``decoys``: the expected number of
    decoys per pedestrian slot of a scene (each of the ``persons_per_image`` draw's persons brings ``int(decoys)``
    decoys plus one more with probability ``decoys - int(decoys)``).

    Decoys are drawn from their own random stream (``default_rng([seed, index, 2])``), after the scene's own draws, so
    a planted scene is its unplanted twin (same background, persons, distractors, noise) with the plant painted and
    the decoys added in depth order. Raises ValueError naming an unknown part or a colour outside 0..255."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    part: str = "left_lower_leg"
    colour: tuple[int, int, int] = (255, 0, 255)
    decoys: float = Field(default=0.5, ge=0.0, le=8.0)

    @model_validator(mode="after")
    def _known_part(self) -> PlantedPart:
        if self.part not in BODY_PARTS:
            raise ValueError(f"planted.part {self.part!r} is not a body part; expected one of {list(BODY_PARTS)}")
        if not _is_rgb(self.colour):
            raise ValueError(f"planted.colour {list(self.colour)} must be RGB values in 0..255")
        return self


class SyntheticConfig(BaseModel):
    """How many scenes, how big, and how hard (sizes, crowding, occlusion, truncation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n_images: int = Field(default=240, ge=1)
    width: int = Field(default=320, ge=32, le=4096)
    height: int = Field(default=240, ge=32, le=4096)
    val_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    persons_per_image: tuple[int, int] = (0, 5)
    distractors_per_image: tuple[int, int] = (1, 4)
    person_height: tuple[float, float] = (0.07, 0.95)   # fraction of image height, drawn log-uniform
    p_occluder: float = Field(default=0.3, ge=0.0, le=1.0)    # per person: a car/bicycle placed in front
    p_truncated: float = Field(default=0.15, ge=0.0, le=1.0)  # per person: placed across an image border
    spurious: SpuriousCue | None = SpuriousCue()
    id_prefix: str = Field(default="syn", pattern=r"^[A-Za-z0-9_-]+$")   # image ids are '<prefix>-000042'
    planted: PlantedPart | None = None      # a body part painted on every pedestrian, plus unannotated decoys

    @model_serializer(mode="wrap")
    def _omit_no_plant(self, handler):
        """Leave ``planted`` out of dumps while it is null, so that configs (manifests, hashes) written before the
        option existed dump exactly as before."""
        data = handler(self)
        if self.planted is None and isinstance(data, dict):
            data.pop("planted", None)
        return data

    @field_validator("persons_per_image", "distractors_per_image", "person_height")
    @classmethod
    def _ordered_range(cls, value: tuple) -> tuple:
        lo, hi = value
        if not 0 <= lo <= hi:
            raise ValueError(f"must be [low, high] with 0 <= low <= high, got {list(value)}")
        return value

    @field_validator("person_height")
    @classmethod
    def _positive_height(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0:
            raise ValueError(f"heights must be > 0, got {list(value)}")
        return value


@dataclass
class SceneObject:
    """One object of a scene with its ground truth in image coordinates (pixel-edge convention)."""

    category: str
    bbox: tuple[float, float, float, float] | None   # xyxy of the amodal mask inside the image; None if outside
    visible_area: int
    occlusion: float                                # hidden fraction of the in-image amodal area
    truncation: float                               # fraction of the amodal area outside the image
    height_px: float                                # full (unclipped) height of the figure / object
    keypoints: np.ndarray | None = None             # [17, 3] (x, y, v) for persons
    part_masks: dict[str, np.ndarray] = field(default_factory=dict)          # amodal, [H, W] bool
    visible_part_masks: dict[str, np.ndarray] = field(default_factory=dict)  # [H, W] bool
    attributes: dict[str, object] = field(default_factory=dict)             # persons: what the generator drew


@dataclass
class Scene:
    image: np.ndarray                 # [H, W, 3] uint8
    labels: list[str]                 # object kinds visible in the scene
    spurious_cue: bool
    objects: list[SceneObject]        # in drawing order (far to near)
    lighting: np.ndarray | None = None  # [H, W] float32 global lighting gain applied to the whole image


@dataclass
class _Shape:
    """An object in its own local canvas: part masks plus the colours to paint them with."""

    category: str
    depth: float                      # ground-contact y: larger = nearer = drawn later
    origin: tuple[int, int]           # (x0, y0) of the local canvas in image pixels
    masks: list[np.ndarray]           # local uint8 masks, drawing order
    slots: list[int]                  # part index (persons) or 0, per mask
    colours: list[np.ndarray]         # [3] colour, or [h, w, 3] per-pixel colour, per mask
    height_px: float
    keypoints: np.ndarray | None = None   # [17, 2] image coords, cv2 convention (pixel j centred at x = j)
    face_depth: np.ndarray | None = None  # [17] facing term for keypoints hidden by the head itself
    attributes: dict[str, object] = field(default_factory=dict)   # persons: pose, clothes, placement as drawn


def render_scene(config: SyntheticConfig, seed: int, index: int) -> Scene:
    """Generate scene ``index`` of the dataset defined by ``config`` and ``seed``."""
    rng = np.random.default_rng([seed, index])
    H, W = config.height, config.width
    horizon = H * rng.uniform(0.3, 0.5)
    background = _background(rng, H, W, horizon)

    shapes: list[_Shape] = []
    n_persons = int(rng.integers(config.persons_per_image[0], config.persons_per_image[1] + 1))
    for _ in range(n_persons):
        person = _place_person(rng, config, horizon)
        shapes.append(person)
        person.attributes["occluder"] = "none"
        if rng.random() < config.p_occluder:
            shapes.append(_occluder_for(rng, person, horizon))
            person.attributes["occluder"] = shapes[-1].category
    n_distractors = int(rng.integers(config.distractors_per_image[0], config.distractors_per_image[1] + 1))
    for _ in range(n_distractors):
        shapes.append(_distractor(rng, config, horizon))
    if config.planted is not None:
        shapes += _plant(config, seed, index, n_persons, shapes, horizon)

    order = sorted(range(len(shapes)), key=lambda i: (shapes[i].depth, i))
    shapes = [shapes[i] for i in order]
    labels_map = np.zeros((H, W), dtype=np.int32)
    layer = np.zeros((H, W, 3), dtype=np.float32)
    for obj_index, shape in enumerate(shapes):
        _paint(shape, obj_index, labels_map, layer)

    objects = [_ground_truth(shape, i, labels_map) for i, shape in enumerate(shapes)]
    present = sorted({o.category for o in objects if o.visible_area >= _MIN_VISIBLE_AREA and o.category != DECOY},
                     key=CATEGORIES.index)

    spurious = False
    if config.spurious is not None:
        cue = config.spurious
        p = cue.correlation if cue.label in present else 1.0 - cue.correlation
        spurious = bool(rng.random() < p)
        if spurious:
            background = background * (1.0 - cue.strength) + np.asarray(cue.tint, np.float32) * cue.strength

    image = np.where((labels_map > 0)[..., None], layer, background)
    image, lighting = _finish(rng, image, H, W)
    for i, (shape, obj) in enumerate(zip(shapes, objects)):
        if shape.category == "person" and obj.bbox is not None:
            obj.attributes = {**shape.attributes,
                              **_measured_attributes(shape, obj, i, shapes, labels_map, layer, background, lighting)}
    return Scene(image=image, labels=present, spurious_cue=spurious, objects=objects, lighting=lighting)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of RGB values [..., 3] (0..255)."""
    return rgb @ np.float32([0.299, 0.587, 0.114])


def _measured_attributes(shape: _Shape, obj: SceneObject, index: int, shapes: list[_Shape], labels_map: np.ndarray,
                         layer: np.ndarray, background: np.ndarray, lighting: np.ndarray) -> dict[str, object]:
    """What a person's scene did to it, measured on the rendered layers (no random draws): who hides it, how it
    stands out from the background behind it, and the light falling on it."""
    amodal = np.logical_or.reduce(list(obj.part_masks.values()))
    visible = labels_map > 0
    visible &= (labels_map - 1) // 16 == index
    hidden = amodal & ~visible
    owners = (labels_map[hidden] - 1) // 16                     # hidden pixels all belong to nearer objects
    kinds = np.array([s.category for s in shapes])[owners] if owners.size else np.zeros(0, str)
    kinds = np.where(kinds == DECOY, "person", kinds)            # a planted scene's decoy hides like a person
    in_image = max(int(amodal.sum()), 1)
    by_person = float((kinds == "person").sum()) / in_image
    by_object = float((kinds != "person").sum()) / in_image
    by_kind = {k: int((kinds == k).sum()) for k in CATEGORIES}
    occluded_by = max(by_kind, key=by_kind.get) if owners.size else "none"
    contrast = (float(np.abs(_luma(layer[visible]) - _luma(background[visible])).mean()) / 255.0
                if visible.any() else float("nan"))
    torso = obj.part_masks["torso"]
    shirt = np.asarray(shape.attributes["shirt_rgb"], np.float32)
    shirt_contrast = (float(np.linalg.norm(background[torso].mean(0) - shirt)) / (255.0 * math.sqrt(3))
                      if torso.any() else float("nan"))
    x0, y0, x1, y1 = (int(v) for v in obj.bbox)
    return {"occluded_by": occluded_by, "person_overlap": by_person, "object_overlap": by_object,
            "contrast": contrast, "shirt_contrast": shirt_contrast,
            "lighting": float(lighting[y0:y1, x0:x1].mean())}


# ---------------------------------------------------------------------------------------------- background
def _lowfreq(rng: np.random.Generator, H: int, W: int, cells: int, lo: float, hi: float) -> np.ndarray:
    grid = rng.uniform(lo, hi, size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (W, H), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, H: int, W: int, horizon: float) -> np.ndarray:
    """Sky gradient, a row of buildings with windows, pavement and a road with lane markings."""
    yy = np.arange(H, dtype=np.float32)[:, None]
    xx = np.arange(W, dtype=np.float32)[None, :]
    sky_top = rng.uniform([60, 110, 170], [140, 170, 235])
    sky_low = rng.uniform([170, 185, 200], [230, 230, 245])
    t = np.clip(yy / max(horizon, 1.0), 0, 1)[..., None]
    img = np.broadcast_to(sky_top * (1 - t) + sky_low * t, (H, W, 3)).astype(np.float32).copy()

    x = 0.0
    while x < W:                                   # buildings along the horizon
        bw = rng.uniform(0.12, 0.35) * W
        top = rng.uniform(0.05, 0.85) * horizon
        x0, x1, y0, y1 = int(x), int(min(W, x + bw)), int(top), int(horizon) + 1
        colour = rng.uniform([70, 60, 55], [200, 190, 180])
        img[y0:y1, x0:x1] = colour
        px, py = rng.uniform(8, 18), rng.uniform(10, 20)
        win = (((xx[:, x0:x1] - x0) % px) < px * 0.5) & (((yy[y0:y1] - y0) % py) < py * 0.55)
        img[y0:y1, x0:x1][win] = colour * rng.uniform(0.35, 0.7)
        x += bw + rng.uniform(0, 0.05) * W

    ground = yy >= horizon
    pavement = rng.uniform([120, 115, 105], [185, 180, 170])
    img[np.broadcast_to(ground, (H, W))] = pavement
    road_top = horizon + rng.uniform(0.15, 0.45) * (H - horizon)
    road_bot = road_top + rng.uniform(0.2, 0.45) * (H - horizon)
    road = (yy >= road_top) & (yy < road_bot)
    img[np.broadcast_to(road, (H, W))] = rng.uniform([55, 55, 55], [95, 95, 100])
    lane_y = (road_top + road_bot) / 2
    dash = (np.abs(yy - lane_y) < max(1.0, 0.01 * H)) & ((xx % 40) < 22)
    img[dash] = (225, 225, 215)
    return img * _lowfreq(rng, H, W, 6, 0.85, 1.15)[..., None]


def _finish(rng: np.random.Generator, img: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Global lighting, sensor noise and a touch of blur, then quantise: (image, the lighting gain [H, W])."""
    lighting = _lowfreq(rng, H, W, 4, 0.88, 1.12)
    img = img * lighting[..., None]
    img = img + rng.normal(0.0, 4.0, size=img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img.astype(np.float32), (3, 3), 0.6)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), lighting


# ---------------------------------------------------------------------------------------------- pedestrians
_HUES = ((8, "red"), (20, "orange"), (33, "yellow"), (78, "green"), (98, "cyan"), (130, "blue"), (150, "purple"),
         (165, "pink"), (181, "red"))                                      # OpenCV hue (0..180) upper bounds


def colour_name(rgb: np.ndarray | Sequence[float]) -> str | np.ndarray:
    """Name of an RGB colour (0..255): black / white / gray by value and saturation, else one of red, orange,
    yellow, green, cyan, blue, purple, pink by OpenCV's HSV hue. ``rgb`` [3] -> str; [..., 3] -> array of str."""
    arr = np.asarray(rgb, np.float32)
    flat = np.clip(np.rint(arr.reshape(-1, 1, 3)), 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(int)
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    bounds = np.array([b for b, _ in _HUES])
    names = np.array([n for _, n in _HUES])[np.searchsorted(bounds, h, side="right")]
    names = np.where(s < 50, np.where(v > 190, "white", "gray"), names)
    names = np.where(v < 50, "black", names).astype(object)
    return str(names[0]) if arr.ndim == 1 else names.reshape(arr.shape[:-1])


def facing_name(yaw_deg: float | np.ndarray) -> str | np.ndarray:
    """Body yaw in degrees (0 faces the camera, the synthetic generator's convention) to ``front`` (within 45° of
    0), ``back`` (within 45° of 180), ``right`` / ``left`` (profile, nose pointing to the image's right / left)."""
    yaw = np.mod(np.asarray(yaw_deg, float), 360.0)
    names = np.select([(yaw <= 45) | (yaw >= 315), yaw < 135, yaw <= 225], ["front", "right", "back"], "left")
    return str(names) if names.ndim == 0 else names.astype(object)


_SKIN = np.array([[255, 219, 172], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 58, 30]])
_HAIR = np.array([[30, 25, 20], [70, 45, 25], [120, 85, 50], [200, 170, 110], [150, 150, 150], [160, 50, 30]])
_PANTS = np.array([[40, 60, 110], [30, 30, 35], [90, 90, 95], [170, 150, 110], [60, 75, 50]])


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(40, 255), rng.integers(50, 240)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _place_person(rng: np.random.Generator, config: SyntheticConfig, horizon: float) -> _Shape:
    H, W = config.height, config.width
    lo, hi = config.person_height
    h = H * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    foot_y = horizon + h / rng.uniform(1.6, 2.4)        # perspective: small people stand near the horizon
    truncated_side = "none"
    if rng.random() < config.p_truncated:
        side = rng.integers(0, 3)                        # left, right or bottom border
        truncated_side = ("left", "right", "bottom")[int(side)]
        if side == 0:
            foot_x = rng.uniform(-0.12, 0.05) * h
        elif side == 1:
            foot_x = W + rng.uniform(-0.05, 0.12) * h
        else:
            foot_x = rng.uniform(0.05, 0.95) * W
            foot_y = H + rng.uniform(0.1, 0.4) * h
    else:
        foot_x = rng.uniform(0.04, 0.96) * W
    person = person_shape(rng, foot_x, foot_y, h)
    person.attributes["truncation_side"] = truncated_side
    person.attributes["horizon_distance"] = float((foot_y - horizon) / H)   # perspective: small = far
    return person


def person_shape(rng: np.random.Generator, foot_x: float, foot_y: float, h: float) -> _Shape:
    """An articulated pedestrian of height ``h`` px standing at (foot_x, foot_y), with random pose and clothes."""
    theta = rng.uniform(0, 2 * math.pi)                 # yaw: 0 faces the camera
    c, s = math.cos(theta), math.sin(theta)
    facing = 1.0 if s >= 0 else -1.0                    # image direction the nose points to in profile
    swing = rng.uniform(0.0, 0.45) * (0.25 + 0.75 * abs(s))
    phase = rng.uniform(0, 2 * math.pi)

    kp = np.zeros((NUM_KEYPOINTS, 2))
    head = np.array([0.0, 0.068 * h])
    ax, ay = 0.052 * h, 0.066 * h
    rx = 0.85 * ax
    face_depth = np.ones(NUM_KEYPOINTS)
    for name, alpha, dy, thr in (("nose", 0.0, 0.012, 0.1), ("left_eye", 0.38, -0.006, 0.1),
                                 ("right_eye", -0.38, -0.006, 0.1), ("left_ear", 1.45, 0.0, -0.2),
                                 ("right_ear", -1.45, 0.0, -0.2)):
        kp[KP[name]] = head + (rx * math.sin(alpha + theta), dy * h)
        face_depth[KP[name]] = math.cos(alpha + theta) - thr   # > 0: faces the camera enough to be seen

    sw, hw = 0.105 * h, 0.075 * h
    kp[KP["left_shoulder"]], kp[KP["right_shoulder"]] = (sw * c, 0.19 * h), (-sw * c, 0.19 * h)
    kp[KP["left_hip"]], kp[KP["right_hip"]] = (hw * c, 0.50 * h), (-hw * c, 0.50 * h)

    def limb(start: np.ndarray, angle: float, length: float) -> np.ndarray:
        return start + length * np.array([math.sin(angle), math.cos(angle)])

    leg_l = swing * math.sin(phase) * facing + 0.05 * c
    leg_r = -swing * math.sin(phase) * facing - 0.05 * c
    kp[KP["left_knee"]] = limb(kp[KP["left_hip"]], leg_l, 0.235 * h)
    kp[KP["right_knee"]] = limb(kp[KP["right_hip"]], leg_r, 0.235 * h)
    kp[KP["left_ankle"]] = limb(kp[KP["left_knee"]], leg_l - facing * 0.7 * swing * (1 + math.cos(phase)) / 2,
                                0.235 * h)
    kp[KP["right_ankle"]] = limb(kp[KP["right_knee"]], leg_r - facing * 0.7 * swing * (1 - math.cos(phase)) / 2,
                                 0.235 * h)
    outward = 1.0 if c >= 0 else -1.0                   # image direction of the person's left side
    arm_l, arm_r = -0.8 * leg_l + 0.10 * c, -0.8 * leg_r - 0.10 * c
    arm_pose = "swinging"
    if rng.random() < 0.08:                             # waving
        if rng.random() < 0.5:
            arm_l = outward * rng.uniform(2.0, 2.6)
            arm_pose = "waving_left"
        else:
            arm_r = -outward * rng.uniform(2.0, 2.6)
            arm_pose = "waving_right"
    for side, arm in (("left", arm_l), ("right", arm_r)):
        elbow = limb(kp[KP[f"{side}_shoulder"]], arm, 0.16 * h)
        kp[KP[f"{side}_elbow"]] = elbow
        kp[KP[f"{side}_wrist"]] = limb(elbow, arm + facing * rng.uniform(0.05, 0.6), 0.145 * h)

    bottom = kp[[KP["left_ankle"], KP["right_ankle"]], 1].max() + 0.03 * h
    offset = np.array([foot_x - kp[[KP["left_ankle"], KP["right_ankle"]], 0].mean(), foot_y - bottom])
    kp += offset
    head += offset

    # Local canvas covering the whole figure.
    pad = 0.06 * h + 3
    x0, y0 = int(math.floor(kp[:, 0].min() - pad)), int(math.floor(min(kp[:, 1].min(), head[1] - ay) - pad))
    x1, y1 = int(math.ceil(kp[:, 0].max() + pad)) + 1, int(math.ceil(kp[:, 1].max() + pad)) + 1
    local = kp - (x0, y0)
    head_local = head - (x0, y0)
    size = (y1 - y0, x1 - x0)

    def fixed(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] * _SCALE)), int(round(p[1] * _SCALE))

    def capsule(a: str, b: str, radius: float) -> np.ndarray:
        m = np.zeros(size, np.uint8)
        cv2.line(m, fixed(local[KP[a]]), fixed(local[KP[b]]), 1, max(1, int(round(2 * radius))), cv2.LINE_8,
                 _SHIFT)
        return m

    head_mask = np.zeros(size, np.uint8)
    cv2.ellipse(head_mask, fixed(head_local), (int(ax * _SCALE), int(ay * _SCALE)), 0, 0, 360, 1, -1,
                cv2.LINE_8, _SHIFT)
    ls, rs, lh, rh = (local[KP[n]] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))
    tpad = 0.025 * h
    xa_s, xb_s = min(ls[0], rs[0]) - tpad, max(ls[0], rs[0]) + tpad
    xa_h, xb_h = min(lh[0], rh[0]) - tpad, max(lh[0], rh[0]) + tpad
    neck_y = head_local[1] + 0.8 * ay
    torso_poly = np.array([(head_local[0] - 0.022 * h, neck_y), (head_local[0] + 0.022 * h, neck_y),
                           (xb_s, ls[1] - 0.015 * h), (xb_h, lh[1] + 0.02 * h),
                           (xa_h, lh[1] + 0.02 * h), (xa_s, ls[1] - 0.015 * h)])
    torso_mask = np.zeros(size, np.uint8)
    cv2.fillPoly(torso_mask, [np.round(torso_poly * _SCALE).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)

    part_masks = {
        "head": head_mask, "torso": torso_mask,
        "left_upper_arm": capsule("left_shoulder", "left_elbow", 0.033 * h),
        "right_upper_arm": capsule("right_shoulder", "right_elbow", 0.033 * h),
        "left_lower_arm": capsule("left_elbow", "left_wrist", 0.027 * h),
        "right_lower_arm": capsule("right_elbow", "right_wrist", 0.027 * h),
        "left_upper_leg": capsule("left_hip", "left_knee", 0.047 * h),
        "right_upper_leg": capsule("right_hip", "right_knee", 0.047 * h),
        "left_lower_leg": capsule("left_knee", "left_ankle", 0.038 * h),
        "right_lower_leg": capsule("right_knee", "right_ankle", 0.038 * h),
    }

    skin_tone = int(rng.integers(len(_SKIN)))
    skin = _SKIN[skin_tone].astype(np.float32)
    shirt = _random_colour(rng)
    pants = _PANTS[rng.integers(len(_PANTS))].astype(np.float32) if rng.random() < 0.7 else _random_colour(rng)
    hair = _HAIR[rng.integers(len(_HAIR))].astype(np.float32)
    short_sleeves = rng.random() < 0.5
    forearm = skin if short_sleeves else shirt
    bare_shins = rng.random() < 0.2
    shin = skin if bare_shins else pants
    hair_line = head_local[1] - 0.3 * ay + 1.6 * ay * max(0.0, -c)   # facing away: all hair
    head_colour = np.where((np.arange(size[0])[:, None, None] < hair_line), hair, skin)
    head_colour = np.broadcast_to(head_colour, (*size, 3))
    colours = {"head": head_colour, "torso": shirt, "left_upper_arm": shirt, "right_upper_arm": shirt,
               "left_lower_arm": forearm, "right_lower_arm": forearm, "left_upper_leg": pants,
               "right_upper_leg": pants, "left_lower_leg": shin, "right_lower_leg": shin}

    # Far limbs behind the torso, near arm in front of it; the left side is far when the figure faces right.
    far, near = ("left", "right") if s > 0 else ("right", "left")
    draw = [f"{far}_upper_leg", f"{far}_lower_leg", f"{far}_upper_arm", f"{far}_lower_arm",
            f"{near}_upper_leg", f"{near}_lower_leg", "torso", "head", f"{near}_upper_arm", f"{near}_lower_arm"]
    yaw = math.degrees(theta)
    attributes = {
        "yaw_deg": yaw, "facing": facing_name(yaw), "walking_phase": phase, "stride": swing, "arm_pose": arm_pose,
        "skin_tone": skin_tone, "shirt_rgb": shirt.tolist(), "shirt_colour": colour_name(shirt),
        "pants_rgb": pants.tolist(), "pants_colour": colour_name(pants), "hair_colour": colour_name(hair),
        "short_sleeves": bool(short_sleeves), "bare_shins": bool(bare_shins), "height_px": float(h),
    }
    return _Shape(category="person", depth=foot_y, origin=(x0, y0),
                  masks=[part_masks[p] for p in draw], slots=[BODY_PARTS.index(p) for p in draw],
                  colours=[colours[p] for p in draw], height_px=h, keypoints=kp, face_depth=face_depth,
                  attributes=attributes)


def _plant(config: SyntheticConfig, seed: int, index: int, n_persons: int, shapes: list[_Shape],
           horizon: float) -> list[_Shape]:
    """Paint ``config.planted.part`` of every person in ``shapes`` (in place) and return the decoys to add: person
    figures placed like pedestrians (no truncation), category :data:`DECOY`, from the stream
    ``default_rng([seed, index, 2])`` so the scene's own draws are untouched (:class:`PlantedPart`)."""
    plant = config.planted
    slot = BODY_PARTS.index(plant.part)
    colour = np.asarray(plant.colour, np.float32)
    for shape in shapes:
        if shape.category == "person":
            shape.colours = [colour if s == slot else c for s, c in zip(shape.slots, shape.colours)]
    rng = np.random.default_rng([seed, index, 2])
    whole, extra = int(plant.decoys), plant.decoys - int(plant.decoys)
    n_decoys = n_persons * whole + int((rng.random(n_persons) < extra).sum())
    untruncated = config.model_copy(update={"p_truncated": 0.0})
    decoys = []
    for _ in range(n_decoys):
        decoy = _place_person(rng, untruncated, horizon)
        decoy.category = DECOY
        decoys.append(decoy)
    return decoys


# ---------------------------------------------------------------------------------------------- other objects
def _layers(size: tuple[int, int], origin: tuple[int, int], category: str, depth: float, height: float,
            parts: list[tuple[callable, np.ndarray]]) -> _Shape:
    masks, colours = [], []
    for draw, colour in parts:
        m = np.zeros(size, np.uint8)
        draw(m)
        masks.append(m)
        colours.append(colour)
    return _Shape(category=category, depth=depth, origin=origin, masks=masks, slots=[0] * len(masks),
                  colours=colours, height_px=height)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _SCALE)), int(round(y * _SCALE))


def car_shape(rng: np.random.Generator, cx: float, ground_y: float, person_h: float) -> _Shape:
    hc = 0.42 * person_h
    w = hc * rng.uniform(2.1, 2.6)
    x0, y0 = int(math.floor(cx - w / 2)) - 2, int(math.floor(ground_y - hc)) - 2
    size = (int(hc) + 5, int(w) + 5)
    L = lambda x, y: _pt(x - x0, y - y0)  # noqa: E731  (image coords -> local fixed point)
    body = _random_colour(rng)
    top, mid, bot = ground_y - hc, ground_y - 0.62 * hc, ground_y - 0.12 * hc
    left, right = cx - w / 2, cx + w / 2
    cabin = np.array([L(left + 0.22 * w, mid), L(left + 0.32 * w, top), L(left + 0.70 * w, top),
                      L(left + 0.82 * w, mid)], np.int32)
    window = np.array([L(left + 0.27 * w, mid), L(left + 0.35 * w, top + 0.1 * hc), L(left + 0.67 * w, top + 0.1 * hc),
                       L(left + 0.76 * w, mid)], np.int32)
    r = 0.2 * hc
    parts = [
        (lambda m: cv2.rectangle(m, L(left, mid), L(right, bot), 1, -1, cv2.LINE_8, _SHIFT), body),
        (lambda m: cv2.fillPoly(m, [cabin], 1, cv2.LINE_8, _SHIFT), body * 0.9),
        (lambda m: cv2.fillPoly(m, [window], 1, cv2.LINE_8, _SHIFT), np.float32([60, 75, 90])),
        (lambda m: cv2.circle(m, L(left + 0.2 * w, ground_y - r), int(r * _SCALE), 1, -1, cv2.LINE_8, _SHIFT),
         np.float32([20, 20, 20])),
        (lambda m: cv2.circle(m, L(left + 0.8 * w, ground_y - r), int(r * _SCALE), 1, -1, cv2.LINE_8, _SHIFT),
         np.float32([20, 20, 20])),
    ]
    return _layers(size, (x0, y0), "car", ground_y, hc, parts)


def bicycle_shape(rng: np.random.Generator, cx: float, ground_y: float, person_h: float) -> _Shape:
    hb = 0.5 * person_h
    r = 0.27 * hb
    x0, y0 = int(math.floor(cx - 0.5 * hb - r)) - 3, int(math.floor(ground_y - hb)) - 3
    size = (int(hb) + 7, int(hb + 2 * r) + 7)
    L = lambda x, y: _pt(x - x0, y - y0)  # noqa: E731
    t = max(1, int(round(0.04 * hb)))
    rear, front = (cx - 0.5 * hb, ground_y - r), (cx + 0.5 * hb, ground_y - r)
    pedal, seat, bar = (cx, ground_y - r), (cx - 0.15 * hb, ground_y - 0.85 * hb), (cx + 0.4 * hb, ground_y - 0.95 * hb)
    frame_colour = _random_colour(rng)

    def frame(m: np.ndarray) -> None:
        for a, b in ((rear, pedal), (pedal, seat), (seat, rear), (seat, bar), (bar, front), (pedal, bar)):
            cv2.line(m, L(*a), L(*b), 1, t, cv2.LINE_8, _SHIFT)

    parts = [
        (lambda m: cv2.circle(m, L(*rear), int(r * _SCALE), 1, t, cv2.LINE_8, _SHIFT), np.float32([25, 25, 25])),
        (lambda m: cv2.circle(m, L(*front), int(r * _SCALE), 1, t, cv2.LINE_8, _SHIFT), np.float32([25, 25, 25])),
        (frame, frame_colour),
    ]
    return _layers(size, (x0, y0), "bicycle", ground_y, hb, parts)


def pole_shape(rng: np.random.Generator, cx: float, ground_y: float, person_h: float) -> _Shape:
    hp = 1.6 * person_h
    pw = max(2.0, 0.04 * person_h)
    rs = 0.13 * person_h
    x0, y0 = int(math.floor(cx - rs)) - 2, int(math.floor(ground_y - hp - rs)) - 2
    size = (int(hp + rs) + 5, int(2 * rs) + 5)
    L = lambda x, y: _pt(x - x0, y - y0)  # noqa: E731
    sign_colour = np.float32([200, 30, 30]) if rng.random() < 0.5 else np.float32([30, 60, 190])
    parts = [
        (lambda m: cv2.rectangle(m, L(cx - pw / 2, ground_y - hp), L(cx + pw / 2, ground_y), 1, -1, cv2.LINE_8,
                                 _SHIFT), np.float32([110, 110, 115])),
        (lambda m: cv2.circle(m, L(cx, ground_y - hp), int(rs * _SCALE), 1, -1, cv2.LINE_8, _SHIFT), sign_colour),
    ]
    return _layers(size, (x0, y0), "pole", ground_y, hp + rs, parts)


_OBJECT_BUILDERS = {"car": car_shape, "bicycle": bicycle_shape, "pole": pole_shape}


def _distractor(rng: np.random.Generator, config: SyntheticConfig, horizon: float) -> _Shape:
    kind = ("car", "bicycle", "pole")[int(rng.integers(3))]
    H, W = config.height, config.width
    ground_y = horizon + rng.uniform(0.05, 1.0) * (H - horizon)
    person_h = (ground_y - horizon) * 2.0
    return _OBJECT_BUILDERS[kind](rng, rng.uniform(0.0, 1.0) * W, ground_y, max(person_h, 8.0))


def _occluder_for(rng: np.random.Generator, person: _Shape, horizon: float) -> _Shape:
    """A car or bicycle standing just in front of ``person`` and overlapping it."""
    ground_y = person.depth + rng.uniform(0.02, 0.15) * person.height_px
    person_h = max((ground_y - horizon) * 2.0, person.height_px)
    cx = float(person.keypoints[:, 0].mean()) + rng.uniform(-0.35, 0.35) * person.height_px
    kind = "car" if rng.random() < 0.6 else "bicycle"
    return _OBJECT_BUILDERS[kind](rng, cx, ground_y, person_h)


# ---------------------------------------------------------------------------------------------- compositing
def _clip(shape: _Shape, H: int, W: int) -> tuple[slice, slice, slice, slice] | None:
    """(image rows, image cols, local rows, local cols) of the part of a shape inside the image."""
    x0, y0 = shape.origin
    h, w = shape.masks[0].shape
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    return slice(iy0, iy1), slice(ix0, ix1), slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0)


def _paint(shape: _Shape, obj_index: int, labels_map: np.ndarray, layer: np.ndarray) -> None:
    clip = _clip(shape, *labels_map.shape)
    if clip is None:
        return
    rows, cols, lrows, lcols = clip
    lab, lay = labels_map[rows, cols], layer[rows, cols]
    for mask, slot, colour in zip(shape.masks, shape.slots, shape.colours):
        m = mask[lrows, lcols].astype(bool)
        lab[m] = obj_index * 16 + slot + 1
        lay[m] = colour[lrows, lcols][m] if colour.ndim == 3 else colour


def _ground_truth(shape: _Shape, obj_index: int, labels_map: np.ndarray) -> SceneObject:
    H, W = labels_map.shape
    total = int(np.logical_or.reduce([m.astype(bool) for m in shape.masks]).sum())
    clip = _clip(shape, H, W)
    empty = SceneObject(category=shape.category, bbox=None, visible_area=0, occlusion=1.0, truncation=1.0,
                        height_px=shape.height_px)
    if clip is None or total == 0:
        return empty
    rows, cols, lrows, lcols = clip
    lab = labels_map[rows, cols]
    full_masks: dict[int, np.ndarray] = {}
    for mask, slot in zip(shape.masks, shape.slots):
        full_masks[slot] = full_masks.get(slot, np.zeros_like(mask, dtype=bool)) | mask.astype(bool)
    union = np.logical_or.reduce(list(full_masks.values()))[lrows, lcols]
    in_image = int(union.sum())
    if in_image == 0:
        return empty
    owner = (lab - 1) // 16 == obj_index
    owner &= lab > 0
    visible_area = int(owner.sum())
    ys, xs = np.nonzero(union)
    bbox = (float(xs.min() + cols.start), float(ys.min() + rows.start),
            float(xs.max() + cols.start + 1), float(ys.max() + rows.start + 1))
    obj = SceneObject(category=shape.category, bbox=bbox, visible_area=visible_area,
                      occlusion=1.0 - visible_area / in_image, truncation=1.0 - in_image / total,
                      height_px=shape.height_px)
    if shape.category != "person":
        return obj

    for slot, mask in full_masks.items():
        part = BODY_PARTS[slot]
        amodal = np.zeros((H, W), bool)
        amodal[rows, cols] = mask[lrows, lcols]
        visible = np.zeros((H, W), bool)
        visible[rows, cols] = lab == obj_index * 16 + slot + 1
        obj.part_masks[part], obj.visible_part_masks[part] = amodal, visible
    obj.part_masks = {p: obj.part_masks[p] for p in BODY_PARTS}
    obj.visible_part_masks = {p: obj.visible_part_masks[p] for p in BODY_PARTS}

    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    for k in range(NUM_KEYPOINTS):
        x, y = shape.keypoints[k] + 0.5                 # cv2 pixel centres -> pixel-edge coordinates
        if not (0 <= x < W and 0 <= y < H):
            continue                                    # outside the image: v = 0, as COCO leaves them
        label = labels_map[int(y), int(x)]
        own = any(label == obj_index * 16 + slot + 1 for slot in _PARTS_OF_KEYPOINT[k])
        seen = own and shape.face_depth[k] > 0
        kp[k] = (x, y, 2 if seen else 1)
    obj.keypoints = kp
    return obj


# ---------------------------------------------------------------------------------------------- dataset rows
def image_id_for(index: int, prefix: str = "syn") -> str:
    return f"{prefix}-{index:06d}"


def split_for(seed: int, index: int, val_fraction: float) -> str:
    """Train/val assignment, independent of the scene's content and of generation order."""
    return "val" if np.random.default_rng([seed, index, 1]).random() < val_fraction else "train"


def _annotated(scene: Scene, image_id: str) -> list[tuple[str, SceneObject]]:
    """(ann_id, object) of the objects that get an annotation, in the annotations table's order."""
    kept = [obj for obj in scene.objects
            if obj.bbox is not None and obj.visible_area >= _MIN_VISIBLE_AREA and obj.category != DECOY]
    return [(f"{image_id}-{i:02d}", obj) for i, obj in enumerate(kept)]


def attribute_rows(scene: Scene, image_id: str) -> list[dict]:
    """Rows for the ``attributes`` table (:data:`detection.datasets.tables.ATTRIBUTES_SCHEMA`): one per annotated
    person, keyed by the same ``ann_id`` as :func:`scene_rows`, with everything the generator drew for it (facing,
    walking phase, arm pose, clothes) and measured on its scene (occluder, overlap, contrast, lighting)."""
    return [{"image_id": image_id, "ann_id": ann_id, **obj.attributes}
            for ann_id, obj in _annotated(scene, image_id) if obj.category == "person"]


def scene_rows(scene: Scene, image_id: str) -> tuple[list[dict], list[dict]]:
    """Rows for the ``annotations`` and ``gt_parts`` tables of one scene."""
    annotations, parts = [], []
    H, W = scene.image.shape[:2]
    for ann_id, obj in _annotated(scene, image_id):
        kp = obj.keypoints
        annotations.append({
            "image_id": image_id, "ann_id": ann_id, "category": obj.category, "bbox": list(obj.bbox),
            "area": float(obj.visible_area), "iscrowd": False,
            "keypoints": None if kp is None else kp.reshape(-1).tolist(),
            "num_keypoints": 0 if kp is None else int((kp[:, 2] > 0).sum()),
            "occlusion": obj.occlusion, "truncation": obj.truncation,
        })
        for part, amodal in obj.part_masks.items():
            visible = obj.visible_part_masks[part]
            parts.append({"image_id": image_id, "ann_id": ann_id, "part": part, "height": H, "width": W,
                          "rle": rle_encode(amodal), "area": int(amodal.sum()),
                          "visible_rle": rle_encode(visible), "visible_area": int(visible.sum())})
    return annotations, parts


def generate_images(config: SyntheticConfig, seed: int, indices: range, images_dir: str,
                    uri_prefix: str | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """Render scenes ``indices``, write them as PNG into ``images_dir``; rows for images, annotations, gt_parts."""
    images, annotations, parts, _ = generate_images_with_attributes(config, seed, indices, images_dir, uri_prefix)
    return images, annotations, parts


def generate_images_with_attributes(config: SyntheticConfig, seed: int, indices: range, images_dir: str,
                                    uri_prefix: str | None = None
                                    ) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """:func:`generate_images` plus the ``attributes`` table's rows (:func:`attribute_rows`). Exporting them draws
    no random numbers: the images and the other tables are byte-identical to :func:`generate_images`'."""
    out = Path(images_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = uri_prefix if uri_prefix is not None else out.as_posix()
    images, annotations, parts, attributes = [], [], [], []
    for index in indices:
        scene = render_scene(config, seed, index)
        image_id = image_id_for(index, config.id_prefix)
        ok, png = cv2.imencode(".png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {image_id}")
        data = png.tobytes()
        (out / f"{image_id}.png").write_bytes(data)
        images.append({"image_id": image_id, "uri": f"{prefix}/{image_id}.png", "width": config.width,
                       "height": config.height, "split": split_for(seed, index, config.val_fraction),
                       "source": "synthetic", "sha256": hashlib.sha256(data).hexdigest(), "mode": "RGB",
                       "labels": scene.labels, "spurious_cue": scene.spurious_cue})
        ann, prt = scene_rows(scene, image_id)
        annotations += ann
        parts += prt
        attributes += attribute_rows(scene, image_id)
    return images, annotations, parts, attributes
