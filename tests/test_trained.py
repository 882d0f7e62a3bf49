"""explainers/trained.py: the weights fingerprint names the weights (not the file, device or layout) and changes with
any of them; checkpoint files are written atomically and read back only when they are what they claim to be."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from explainers.trained import load_checkpoint, save_checkpoint, tensors_sha256, weights_fingerprint

FMT, VERSION, REQUIRED = "xai-audit/test", 2, ("model_sha256", "state_dict")


def test_the_fingerprint_names_the_weights_not_the_file_or_layout(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 5))
    fp = weights_fingerprint(SimpleNamespace(model=net))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    again = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 5))
    again.load_state_dict(torch.load(tmp_path / "w.pt"))
    assert weights_fingerprint(SimpleNamespace(model=SimpleNamespace(model=again))) == fp   # an adapter's .model
    column_major = {k: v.t().contiguous().t() if v.dim() == 2 else v for k, v in net.state_dict().items()}
    assert not column_major["2.weight"].is_contiguous() and tensors_sha256(column_major) == fp
    with torch.no_grad():
        again[0].weight[0, 0, 0, 0] += 1e-6
    assert weights_fingerprint(SimpleNamespace(model=again)) != fp
    assert tensors_sha256({"a": torch.zeros(2, 3)}) != tensors_sha256({"a": torch.zeros(3, 2)})      # shape counts
    assert tensors_sha256({"a": torch.zeros(2)}) != tensors_sha256({"a": torch.zeros(2, dtype=torch.float64)})
    assert weights_fingerprint(SimpleNamespace(model=None, weights_sha256="abc")) == "abc"
    with pytest.raises(ValueError, match="cannot fingerprint .* weights_sha256"):
        weights_fingerprint(SimpleNamespace(model=lambda x: x))


def test_a_checkpoint_round_trips_and_a_wrong_file_is_named(tmp_path):
    payload = {"format": FMT, "version": VERSION, "model_sha256": "ab", "state_dict": {"w": torch.ones(2)}}
    path = save_checkpoint(payload, tmp_path / "sub" / "c.pt")
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]                  # no temporary left behind
    raw = load_checkpoint(path, FMT, VERSION, REQUIRED, "thing", "train one")
    assert raw["model_sha256"] == "ab" and torch.equal(raw["state_dict"]["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="thing: file not found: .*none.pt \\(train one\\)"):
        load_checkpoint(tmp_path / "none.pt", FMT, VERSION, REQUIRED, "thing", "train one")
    (tmp_path / "text.pt").write_text("not torch")
    with pytest.raises(ValueError, match="thing: .*text.pt is not a readable file"):
        load_checkpoint(tmp_path / "text.pt", FMT, VERSION, REQUIRED, "thing", "train one")
    for name, obj, got in (("tensor.pt", torch.ones(1), "Tensor"), ("old.pt", {**payload, "version": 1}, "1"),
                           ("other.pt", {**payload, "format": "x"}, "'x'")):
        torch.save(obj, tmp_path / name)
        with pytest.raises(ValueError, match=f"{name} is not a {FMT} version {VERSION} file \\(got .*{got}"):
            load_checkpoint(tmp_path / name, FMT, VERSION, REQUIRED, "thing", "train one")
    torch.save({k: v for k, v in payload.items() if k != "model_sha256"}, tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"short.pt misses \['model_sha256'\]"):
        load_checkpoint(tmp_path / "short.pt", FMT, VERSION, REQUIRED, "thing", "train one")
