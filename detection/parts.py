"""Body-part masks of one pedestrian from its 17 COCO keypoints, or from its box alone (template): the players of
its relevance game.

Shapes follow the limbs: a capsule per arm/leg segment, an ellipse for the head, a padded polygon over shoulders and
hips for the torso, all sized from the person's height. Parts are painted into one label map (torso, legs, arms,
head: a later part wins where two overlap), so the masks are disjoint by construction, and clipped to the person's
box and the image. A part whose keypoints are missing gets an empty mask; a part whose keypoints are present but
occluded gets its mask with ``visible=False``: we mark it, we do not guess it away.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from detection.body import BODY_PARTS, KP, NUM_KEYPOINTS, PART_GROUPS, PART_KEYPOINTS
from detection.masks import rle_encode_at

_SHIFT = 4                     # cv2 sub-pixel bits: coordinates are drawn at 1/16 px
_SCALE = 1 << _SHIFT
FACE = [KP[n] for n in PART_KEYPOINTS["head"]]
SOURCES = ("gt", "pose", "template")


class PartsError(ValueError):
    """A person whose box or keypoints cannot give parts (degenerate box, no overlap with the image, NaN)."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class BodyProportions:
    """Part sizes as fractions of the person's standing height (adult proportions on the COCO skeleton)."""

    head_axes: tuple[float, float] = (0.052, 0.066)        # ellipse semi-axes (x, y)
    head_above_shoulders: float = 0.122                    # head centre above the shoulders' midpoint
    neck_below_head: float = 0.053                         # torso top below the head centre
    torso_length: float = 0.31                             # shoulders' to hips' midpoint
    torso_pad: float = 0.025                               # margin around the shoulder-hip polygon
    limb_length: dict[str, float] = field(default_factory=lambda: {
        "upper_arm": 0.16, "lower_arm": 0.145, "upper_leg": 0.235, "lower_leg": 0.235})
    limb_radius: dict[str, float] = field(default_factory=lambda: {
        "upper_arm": 0.033, "lower_arm": 0.027, "upper_leg": 0.047, "lower_leg": 0.038})


# A standing person facing the camera, in box units: x from the box centre (fraction of height), y from the top.
TEMPLATE_KEYPOINTS = np.array([
    (0.0, 0.080), (0.016, 0.062), (-0.016, 0.062), (0.044, 0.068), (-0.044, 0.068),      # face
    (0.105, 0.190), (-0.105, 0.190), (0.121, 0.349), (-0.121, 0.349), (0.130, 0.490), (-0.130, 0.490),
    (0.075, 0.500), (-0.075, 0.500), (0.087, 0.735), (-0.087, 0.735), (0.099, 0.970), (-0.099, 0.970),
])

# Later parts win overlaps: arms in front of the torso, the head over the neck.
PAINT_ORDER = ("torso", "left_upper_leg", "right_upper_leg", "left_lower_leg", "right_lower_leg",
               "left_upper_arm", "right_upper_arm", "left_lower_arm", "right_lower_arm", "head")


@dataclass
class Keypoints:
    """17 keypoints in pixel-edge image coordinates, which are placed (``located``) and which are seen."""

    xy: np.ndarray          # [17, 2] float
    located: np.ndarray     # [17] bool: the position is known (COCO v > 0, pose confidence >= threshold)
    visible: np.ndarray     # [17] bool: the keypoint is seen (COCO v == 2, pose confidence >= threshold)

    @classmethod
    def from_coco(cls, flat) -> Keypoints:
        """COCO [x, y, v] * 17: v=0 not labelled, v=1 labelled but occluded, v=2 visible."""
        k = _as_keypoints(flat)
        return cls(k[:, :2].copy(), k[:, 2] > 0, k[:, 2] >= 2)

    @classmethod
    def from_pose(cls, flat, min_confidence: float = 0.5) -> Keypoints:
        """A pose model's [x, y, confidence] * 17. YOLO-pose learns 'labelled' (COCO v > 0) as its confidence, so a
        confident keypoint counts as both placed and seen: the model cannot tell occluded from visible."""
        k = _as_keypoints(flat)
        ok = k[:, 2] >= min_confidence
        return cls(k[:, :2].copy(), ok, ok.copy())

    @classmethod
    def template(cls, box) -> Keypoints:
        """The standing template stretched over a box (source 'template'): every keypoint placed and seen."""
        x1, y1, x2, y2 = _check_box(box)
        h = y2 - y1
        xy = np.stack([(x1 + x2) / 2 + TEMPLATE_KEYPOINTS[:, 0] * h, y1 + TEMPLATE_KEYPOINTS[:, 1] * h], 1)
        ones = np.ones(NUM_KEYPOINTS, bool)
        return cls(xy, ones, ones.copy())

    @property
    def count(self) -> int:
        return int(self.located.sum())


def _as_keypoints(flat) -> np.ndarray:
    k = np.asarray(flat, dtype=np.float64).reshape(-1)
    if k.size != 3 * NUM_KEYPOINTS:
        raise PartsError("bad_keypoints", f"expected {3 * NUM_KEYPOINTS} keypoint values, got {k.size}")
    if not np.isfinite(k).all():
        raise PartsError("bad_keypoints", "keypoints contain NaN or infinite values")
    return k.reshape(NUM_KEYPOINTS, 3)


def _check_box(box) -> tuple[float, float, float, float]:
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        raise PartsError("bad_box", f"box must be 4 finite numbers, got {b.tolist()}")
    x1, y1, x2, y2 = b.tolist()
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise PartsError("degenerate_box", f"box {[round(v, 2) for v in b.tolist()]} is under one pixel wide or high")
    return x1, y1, x2, y2


@dataclass
class PersonParts:
    """Disjoint part masks of one person, stored as a crop of the image (the box clipped to it)."""

    names: tuple[str, ...]
    masks: np.ndarray                 # [P, h, w] bool, the crop at ``origin``
    visible: np.ndarray               # [P] bool
    origin: tuple[int, int]           # (top, left) of the crop in the image
    image_size: tuple[int, int]       # (H, W)
    source: str                       # gt | pose | template
    height: float                     # estimated standing height, px

    @property
    def areas(self) -> np.ndarray:
        return self.masks.reshape(len(self.names), -1).sum(1)

    def rles(self) -> list[np.ndarray]:
        """COCO RLE of each part's full-image mask."""
        return [rle_encode_at(m, *self.origin, *self.image_size) for m in self.masks]

    def full(self) -> np.ndarray:
        """[P, H, W] bool masks in image coordinates."""
        out = np.zeros((len(self.names), *self.image_size), bool)
        top, left = self.origin
        out[:, top:top + self.masks.shape[1], left:left + self.masks.shape[2]] = self.masks
        return out

    def grouped(self, grouping: str = "parts10", context: bool = False) -> PersonParts:
        """Parts merged into a coarser grouping (``detection.body.PART_GROUPS``), plus the optional ``context`` player:
        the box minus the person, so that relevance outside the body is measured too."""
        if grouping not in PART_GROUPS:
            raise ValueError(f"unknown part grouping {grouping!r}; expected one of {sorted(PART_GROUPS)}")
        index = {n: i for i, n in enumerate(self.names)}
        names, masks, visible = [], [], []
        for group, members in PART_GROUPS[grouping].items():
            idx = [index[m] for m in members]
            names.append(group)
            masks.append(self.masks[idx].any(0))
            visible.append(bool(self.visible[idx].any()))
        if context:
            names.append("context")
            masks.append(~self.masks.any(0))
            visible.append(True)
        return PersonParts(tuple(names), np.stack(masks), np.array(visible), self.origin, self.image_size,
                           self.source, self.height)


def estimate_height(kps: Keypoints, box, proportions: BodyProportions = BodyProportions()) -> float:
    """Standing height: the larger of the box height and the median of the heights implied by each placed segment
    (limbs and torso). The box is short for truncated or crouching people, segments are short when foreshortened."""
    x1, y1, x2, y2 = box
    xy, ok = kps.xy, kps.located
    estimates = []
    for side in ("left", "right"):
        for seg, (a, b) in {"upper_arm": ("shoulder", "elbow"), "lower_arm": ("elbow", "wrist"),
                            "upper_leg": ("hip", "knee"), "lower_leg": ("knee", "ankle")}.items():
            i, j = KP[f"{side}_{a}"], KP[f"{side}_{b}"]
            if ok[i] and ok[j]:
                estimates.append(np.hypot(*(xy[i] - xy[j])) / proportions.limb_length[seg])
    sh, hp = [KP["left_shoulder"], KP["right_shoulder"]], [KP["left_hip"], KP["right_hip"]]
    if ok[sh].all() and ok[hp].all():
        estimates.append(np.hypot(*(xy[sh].mean(0) - xy[hp].mean(0))) / proportions.torso_length)
    limb_h = float(np.median(estimates)) if estimates else 0.0
    return max(float(y2 - y1), limb_h)


def _head_center(pts: np.ndarray, located: np.ndarray, h: float, proportions: BodyProportions) -> np.ndarray | None:
    """The head's centre [2] (crop pixels) from the keypoints [17, 2] placed (``located`` [17] bool): between the
    ears, else the face's mean x at the ears' (else the face's) mean y, else above the shoulders; None without any."""
    face = [i for i in FACE if located[i]]
    shoulders = [KP["left_shoulder"], KP["right_shoulder"]]
    ears = [i for i in (KP["left_ear"], KP["right_ear"]) if located[i]]
    if len(ears) == 2:                                     # the ears sit level with the head's centre
        return pts[ears].mean(0)
    if face:
        return np.array([pts[face, 0].mean(), pts[ears or face, 1].mean()])
    if located[shoulders].any():
        return pts[[i for i in shoulders if located[i]]].mean(0) - (0, proportions.head_above_shoulders * h)
    return None


def body_parts(kps: Keypoints, box, image_size: tuple[int, int], source: str,
               proportions: BodyProportions = BodyProportions()) -> PersonParts:
    """The 10 body parts (``detection.body.BODY_PARTS``) of the person in ``box`` (xyxy, pixel edges)."""
    H, W = image_size
    x1, y1, x2, y2 = _check_box(box)
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(W, math.ceil(x2)), min(H, math.ceil(y2))
    if right <= left or bottom <= top:
        raise PartsError("outside_image", f"box {[round(v, 1) for v in (x1, y1, x2, y2)]} does not overlap the "
                                          f"{W}x{H} image")
    h = estimate_height(kps, (x1, y1, x2, y2), proportions)
    canvas = np.zeros((bottom - top, right - left), np.uint8)
    origin = np.array([left + 0.5, top + 0.5])             # pixel-edge -> cv2 pixel-centre coordinates of the crop
    located, visible = kps.located, kps.visible
    pts = kps.xy - origin

    def fixed(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] * _SCALE)), int(round(p[1] * _SCALE))

    shoulders = [KP["left_shoulder"], KP["right_shoulder"]]
    hips = [KP["left_hip"], KP["right_hip"]]
    head_center = _head_center(pts, located, h, proportions)
    part_visible = dict.fromkeys(BODY_PARTS, False)

    for label, part in enumerate(PAINT_ORDER, start=1):
        if part == "head":
            if head_center is None:
                continue
            ax, ay = (max(1, int(a * h * _SCALE)) for a in proportions.head_axes)
            cv2.ellipse(canvas, fixed(head_center), (ax, ay), 0, 0, 360, label, -1, cv2.LINE_8, _SHIFT)
            part_visible[part] = bool(visible[FACE].any())
        elif part == "torso":
            poly = _torso_points(pts, located, h, proportions)
            if poly is None:
                continue
            if head_center is not None:
                poly = np.vstack([poly, head_center + (0, proportions.neck_below_head * h)])
            hull = cv2.convexHull(np.round(poly * _SCALE).astype(np.int32))
            cv2.fillConvexPoly(canvas, hull, label, cv2.LINE_8, _SHIFT)
            pad = max(1, int(round(2 * proportions.torso_pad * h)))
            cv2.polylines(canvas, [hull], True, label, pad, cv2.LINE_8, _SHIFT)
            part_visible[part] = int(visible[shoulders + hips].sum()) >= 2
        else:
            a, b = (KP[k] for k in PART_KEYPOINTS[part])
            if not (located[a] and located[b]):
                continue
            radius = proportions.limb_radius[part.split("_", 1)[1]] * h
            cv2.line(canvas, fixed(pts[a]), fixed(pts[b]), label, max(1, int(round(2 * radius))), cv2.LINE_8,
                     _SHIFT)
            part_visible[part] = bool(visible[a] and visible[b])

    # Clip to the box itself (the canvas is the box's whole-pixel cover), then split the label map.
    cy = np.arange(top, bottom) + 0.5
    cx = np.arange(left, right) + 0.5
    canvas *= ((cy >= y1) & (cy < y2))[:, None] & ((cx >= x1) & (cx < x2))[None, :]
    labels = np.array([PAINT_ORDER.index(p) + 1 for p in BODY_PARTS], np.uint8)
    masks = canvas[None] == labels[:, None, None]
    vis = np.array([part_visible[p] for p in BODY_PARTS]) & masks.reshape(len(BODY_PARTS), -1).any(1)
    return PersonParts(BODY_PARTS, masks, vis, (top, left), (H, W), source, h)


def _torso_points(pts: np.ndarray, located: np.ndarray, h: float, proportions: BodyProportions) -> np.ndarray | None:
    """Shoulder and hip points of the torso polygon; a missing pair is placed one torso length from the other
    (people are upright: a person cut off at the waist still has a torso down to the image edge)."""
    sh = [KP["left_shoulder"], KP["right_shoulder"]]
    hp = [KP["left_hip"], KP["right_hip"]]
    s, p = pts[[i for i in sh if located[i]]], pts[[i for i in hp if located[i]]]
    down = np.array([0.0, proportions.torso_length * h])
    if len(s) and len(p):
        return np.vstack([s, p])
    if len(s) == 2:
        mid = s.mean(0)
        return np.vstack([s, mid + (s - mid) * 0.714 + down])      # hips are ~0.7x the shoulders' width
    if len(p) == 2:
        mid = p.mean(0)
        return np.vstack([p, mid + (p - mid) * 1.4 - down])
    return None


def paint_disjoint(masks: np.ndarray) -> np.ndarray:
    """Overlapping masks of the 10 ``BODY_PARTS`` [10, H, W] made disjoint the way :func:`body_parts` paints its
    own (later parts of ``PAINT_ORDER`` win): how ground-truth amodal part masks are compared with ours."""
    labels = np.zeros(masks.shape[1:], np.uint8)
    for label, part in enumerate(PAINT_ORDER, start=1):
        labels[masks[BODY_PARTS.index(part)]] = label
    order = np.array([PAINT_ORDER.index(p) + 1 for p in BODY_PARTS], np.uint8)
    return labels[None] == order[:, None, None]


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of mask stacks a, b [N, H, W] pairwise along N -> [N]; NaN where both are empty."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    inter = (a & b).sum(1)
    union = (a | b).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)
