"""The report's "Model guidance" section (tasks.report_guidance) from a hand-made guide stage output."""
import numpy as np
import pandas as pd
from PIL import Image

from tasks.report_guidance import GuidanceInputs, f1_table, guidance_section, overlay_keys, probe_table


def _ci(mean, lo, hi, n=250):
    return {"mean": mean, "low": lo, "high": hi, "n": n}


def _model(p_cue, p_none, f1_bike_in, f1_bike_dec):
    f1 = {"person": 0.9, "bicycle": f1_bike_in, "car": 0.95, "pole": 0.85}
    dec = {**f1, "bicycle": f1_bike_dec}
    return {"probe": {"with_cue": _ci(p_cue, p_cue - 0.03, p_cue + 0.03),
                      "without_cue": _ci(p_none, p_none - 0.02, p_none + 0.02),
                      "difference": _ci(p_cue - p_none, p_cue - p_none - 0.03, p_cue - p_none + 0.03)},
            "in_distribution": {"mean_f1": float(np.mean(list(f1.values()))), "f1": f1, "images": 400},
            "decorrelated": {"mean_f1": float(np.mean(list(dec.values()))), "f1": dec, "images": 400},
            "bicycle_f1_gap": f1_bike_dec - f1_bike_in}


METRICS = {
    "original": "demo-scene", "guided": "demo-scene-guided", "label": "bicycle", "jobs": ["rise"],
    "training": {"source": "trained", "annotated_images": 96, "train_images": 960, "epochs_run": 4,
                 "config": {"lam": 1.0, "loss": "energy", "attribution": "ixg", "layer": "features.2",
                            "fraction": 0.1}},
    "audited": {"demo-scene": {"val": {"mean_f1": 0.905, "f1": {"person": 0.94, "bicycle": 0.93, "car": 0.96,
                                                                "pole": 0.79}, "images": 54}}},
    "audited_probe": {"demo-scene": {"p_bicycle_absent_with_cue": 0.93, "p_bicycle_absent_without_cue": 0.14}},
    "rise_epg": {"demo-scene": {"rise": {**_ci(0.29, 0.22, 0.36, 40), "chance": 0.12}},
                 "demo-scene-guided": {"rise": {**_ci(0.41, 0.33, 0.49, 40), "chance": 0.12}}},
    "sets": {"probe_scenes_per_arm": 250, "decorrelated_images": 400, "heldout_images": 400},
    "models": {"demo-scene": _model(0.91, 0.15, 0.93, 0.70), "demo-scene-guided": _model(0.25, 0.12, 0.92, 0.91)},
}


def _inputs(tmp_path) -> GuidanceInputs:
    ids = ["syn-000001", "syn-000002", "syn-000003"]
    for i in ids:
        Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(tmp_path / f"{i}.png")
    sal = list(np.linspace(0, 1, 12 * 16, dtype=np.float32))
    exp = pd.DataFrame([{"image_id": i, "target_id": "class:bicycle", "job": "rise", "saliency": sal,
                         "saliency_height": 12, "saliency_width": 16} for i in ids])
    targets = pd.DataFrame([{"image_id": i, "target_id": "class:bicycle", "category": "bicycle",
                             "label_present": present, "spurious_cue": cue}
                            for i, present, cue in zip(ids, [True, False, True], [True, True, False])])
    preds = pd.DataFrame([{"model_id": m, "image_id": i, "category": "bicycle", "score": s}
                          for m, s in (("demo-scene", 0.9), ("demo-scene-guided", 0.3)) for i in ids])
    images = pd.DataFrame({"image_id": ids, "uri": [str(tmp_path / f"{i}.png") for i in ids]})
    return GuidanceInputs(METRICS, exp, exp, targets, images, preds)


def test_tables_carry_both_models_with_intervals():
    probe = probe_table(METRICS)
    assert list(probe["model"]) == ["original (demo-scene)", "guided (demo-scene-guided)"]
    assert probe.iloc[0]["P(bicycle | no bicycle, cue)"] == "0.91 [0.88, 0.94]"
    assert probe.iloc[1]["P(bicycle | no bicycle, cue)"] == "0.25 [0.22, 0.28]"
    assert probe.iloc[0]["audited images: cue / no cue"] == "0.93 / 0.14"
    f1 = f1_table(METRICS)
    assert len(f1) == 5 and set(f1["model"]) == {"original", "guided"}       # the guided one has no audited row
    assert f1[f1["scenes"].str.startswith("decorrelated")]["bicycle"].tolist() == [0.70, 0.91]


def test_section_has_findings_markdown_and_side_by_side_overlays(tmp_path):
    inp = _inputs(tmp_path)
    assert overlay_keys(inp, "bicycle", 3) == {"bicycle present, cue present": ["syn-000001"],
                                               "bicycle absent, cue present": ["syn-000002"]}
    body, md = guidance_section(inp, per_row=3)
    assert md[0] == "## Model guidance"
    text = "\n".join(md)
    assert "0.91 [0.88, 0.94] -> 0.25 [0.22, 0.28]" in text and "rise EPG inside bicycle boxes" in text
    assert "original +0.230" not in text and "original -0.230" in text and "guided -0.010" in text
    assert body.count("<figure>") == 4                                       # 2 scenes x (original, guided)
    assert "syn-000002 · guided · P(bicycle) 0.30" in body
    assert "data:image/png;base64," in body
