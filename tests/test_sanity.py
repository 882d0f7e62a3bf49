"""Adebayo's cascading randomisation (explainers/sanity.py): the copy is randomised, never the model; a gradient
method's maps decorrelate as the layers are randomised, a map that ignores the model does not."""
from __future__ import annotations

import torch
from torch import nn

from detection.models.classifier import ImageClassifier
from detection.scorers import ClassifierScorer
from explainers.base import Explainer
from explainers.gradients import InputXGradient, IntegratedGradients
from explainers.sanity import cascade, cascading_randomisation, parameter_layers, rank_correlation


def trained_net() -> nn.Module:
    """A small CNN trained for a few steps to tell a bright top-left square from a bright bottom-right one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 2))
    x = torch.rand(64, 3, 16, 16) * 0.3
    y = torch.arange(64) % 2
    x[y == 0, :, :6, :6] += 0.7
    x[y == 1, :, 10:, 10:] += 0.7
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


class ImageItself(Explainer):
    """A 'method' that ignores the model: the image's brightness (the paper's edge-detector failure mode)."""

    name = "image_itself"

    def _explain(self, image, regions, budget, generator):
        self.score(image[None])
        T = self.scorer.num_targets
        return image.mean(0, keepdim=True).expand(T, -1, -1).clone(), None, {}


def test_cascade_and_rank_correlation():
    assert cascade(7, 3) == [0, 2, 5, 7] and cascade(2, 5) == [0, 1, 2]
    a = torch.arange(16.0)
    assert rank_correlation(a, a ** 3) == 1.0 and rank_correlation(a, -a) == -1.0
    assert rank_correlation(a, torch.zeros(16)) != rank_correlation(a, torch.zeros(16))      # NaN: no ranking


def test_gradient_maps_decorrelate_and_a_model_blind_map_does_not():
    clf = ImageClassifier(trained_net(), ["tl", "br"], mean=(0, 0, 0), std=(1, 1, 1), device="cpu", amp=False)
    before = [p.clone() for p in clf.model.parameters()]
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.3
    image[:, :6, :6] += 0.7
    methods = {"input_x_gradient": lambda s: InputXGradient(s),
               "integrated_gradients": lambda s: IntegratedGradients(s, steps=8),
               "image_itself": lambda s: ImageItself(s)}
    rows = cascading_randomisation(clf, "model", lambda m: ClassifierScorer(m, [0]), methods, [image], steps=3)
    assert all(torch.equal(a, b) for a, b in zip(before, clf.model.parameters()))        # the model is untouched
    assert len(parameter_layers(clf.model)) == 3 and {r["stage"] for r in rows} == {0, 1, 2, 3}
    by = {(r["method"], r["stage"]): r for r in rows}
    for name in ("input_x_gradient", "integrated_gradients"):
        assert by[(name, 0)]["spearman"] > 1 - 1e-9
        assert by[(name, 3)]["spearman_abs"] < 0.8, (name, [by[(name, s)]["spearman_abs"] for s in range(4)])
    assert all(by[("image_itself", s)]["spearman"] > 1 - 1e-9 for s in range(4))         # fails the check


def test_summary_passes_only_decorrelated_jobs_and_names_black_boxes():
    from tasks.report_sanity import passing_jobs, sanity_table
    from tasks.sanity import sanity_summary

    def row(job, stage, rho, rho_abs, target="t0"):
        return {"job": job, "method": job, "model": "detector", "stage": stage, "randomised": 10 * stage,
                "layers": 20, "top_layer": None, "image_id": "i", "target_id": target, "spearman": rho,
                "spearman_abs": rho_abs}

    rows = [row("good", 0, 1.0, 1.0), row("good", 2, 0.1, -0.2), row("good", 2, 0.3, 0.2, "t1"),
            row("blind", 0, 1.0, 1.0), row("blind", 2, 0.95, 0.9),
            row("half", 0, 1.0, 1.0), row("half", 2, 0.1, 0.8),              # signed low, absolute high: fails
            row("broken", 0, 1.0, 1.0), row("broken", 2, float("nan"), float("nan"))]
    status = {j: "checked" for j in ("good", "blind", "half", "broken")} | {"onnx": "not applicable: no autograd"}
    summary = sanity_summary(rows, status, 0.5)
    assert summary["good"]["passes"] and summary["good"]["spearman_full"] == 0.2          # median of 0.1, 0.3
    assert summary["good"]["targets"] == 2 and [s["stage"] for s in summary["good"]["stages"]] == [0, 2]
    assert not summary["blind"]["passes"] and not summary["half"]["passes"]
    assert not summary["broken"]["passes"] and summary["broken"]["spearman_full"] is None   # no value: not a pass
    assert summary["onnx"] == {"status": "not applicable: no autograd"}
    evaluate = {"sanity": {"steps": 2, "max_correlation": 0.5, "jobs": summary}}
    assert passing_jobs(evaluate) == {"good"}
    table = sanity_table(evaluate).set_index("job")
    assert table.loc["good", "verdict"] == "passes" and table.loc["blind", "verdict"].startswith("does not pass")
    assert table.loc["onnx", "verdict"].startswith("not applicable")


def test_a_map_that_turns_constant_counts_as_uncorrelated():
    import numpy as np

    from tasks.sanity import _correlations

    trained = np.array([0.1, 0.5, -0.3, 0.9])
    assert _correlations(trained, np.zeros(4)) == (0.0, 0.0)
    assert _correlations(trained, trained * 2) == (1.0, 1.0)
    assert all(np.isnan(v) for v in _correlations(np.ones(4), np.ones(4)))         # nothing ranked: undefined
