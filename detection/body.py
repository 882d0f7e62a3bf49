"""COCO person keypoints and the body parts built from them (the players of a pedestrian's relevance game)."""
from __future__ import annotations

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
KP = {name: i for i, name in enumerate(COCO_KEYPOINTS)}
NUM_KEYPOINTS = len(COCO_KEYPOINTS)

# COCO's person skeleton, 1-based keypoint indices, as in the official annotation files.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)

BODY_PARTS: tuple[str, ...] = (
    "head", "torso",
    "left_upper_arm", "right_upper_arm", "left_lower_arm", "right_lower_arm",
    "left_upper_leg", "right_upper_leg", "left_lower_leg", "right_lower_leg",
)

# Keypoints that bound each part: limbs are the segment between two joints.
PART_KEYPOINTS: dict[str, tuple[str, ...]] = {
    "head": ("nose", "left_eye", "right_eye", "left_ear", "right_ear"),
    "torso": ("left_shoulder", "right_shoulder", "right_hip", "left_hip"),
    "left_upper_arm": ("left_shoulder", "left_elbow"),
    "right_upper_arm": ("right_shoulder", "right_elbow"),
    "left_lower_arm": ("left_elbow", "left_wrist"),
    "right_lower_arm": ("right_elbow", "right_wrist"),
    "left_upper_leg": ("left_hip", "left_knee"),
    "right_upper_leg": ("right_hip", "right_knee"),
    "left_lower_leg": ("left_knee", "left_ankle"),
    "right_lower_leg": ("right_knee", "right_ankle"),
}

# Coarser groupings a user can ask for instead of the 10 parts.
PART_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "parts10": {p: (p,) for p in BODY_PARTS},
    "parts6": {
        "head": ("head",), "torso": ("torso",),
        "left_arm": ("left_upper_arm", "left_lower_arm"), "right_arm": ("right_upper_arm", "right_lower_arm"),
        "left_leg": ("left_upper_leg", "left_lower_leg"), "right_leg": ("right_upper_leg", "right_lower_leg"),
    },
    "parts4": {
        "head": ("head",), "torso": ("torso",),
        "arms": ("left_upper_arm", "left_lower_arm", "right_upper_arm", "right_lower_arm"),
        "legs": ("left_upper_leg", "left_lower_leg", "right_upper_leg", "right_lower_leg"),
    },
}
