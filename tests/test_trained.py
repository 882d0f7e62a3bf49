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


def small_parts_checkpoint():
    from explainers.fastshap import FastShapCheckpoint, FastShapNet, player_names
    from explainers.perturb import make_perturbation

    torch.manual_seed(0)
    players = player_names("parts4")
    return FastShapCheckpoint(model_sha256="ab" * 32, grouping="parts4", players=players,
                              perturbation=make_perturbation("mean").describe(), crop_size=(16, 8),
                              state_dict=FastShapNet(len(players), 4, 8).state_dict(), width=4, hidden=8)


def counting_hash(monkeypatch) -> list:
    import explainers.trained as trained

    calls = []

    def counted(tensors):
        calls.append(1)
        return tensors_sha256(tensors)

    monkeypatch.setattr(trained, "tensors_sha256", counted)
    return calls


def test_a_checkpoints_digest_is_hashed_once_and_follows_its_weights(monkeypatch):
    import pickle

    ckpt = small_parts_checkpoint()
    calls = counting_hash(monkeypatch)
    first = ckpt.digest()
    assert first == tensors_sha256(ckpt.state_dict)[:12] and ckpt.digest() == first and len(calls) == 1
    net = ckpt.shared_network()
    assert ckpt.shared_network() is net

    name = "head.4.bias"
    with torch.no_grad():                                        # in place: the autograd version moves
        ckpt.state_dict[name][0] += 1.0
    changed = ckpt.digest()
    assert changed != first and changed == tensors_sha256(ckpt.state_dict)[:12] and len(calls) == 2
    rebuilt = ckpt.shared_network()
    assert rebuilt is not net and torch.equal(rebuilt.state_dict()[name], ckpt.state_dict[name])

    ckpt.state_dict[name] = ckpt.state_dict[name] - 1.0         # another tensor in the dict: the first weights
    assert ckpt.digest() == first and len(calls) == 3
    ckpt.state_dict = {k: v.clone() for k, v in ckpt.state_dict.items()}      # a new dict, the same values
    assert ckpt.digest() == first and len(calls) == 4
    ckpt.state_dict = {k: v for k, v in ckpt.state_dict.items() if k != name}  # a tensor removed
    assert ckpt.digest() == tensors_sha256(ckpt.state_dict)[:12] != first

    ckpt = small_parts_checkpoint()
    ckpt.digest()
    copy = pickle.loads(pickle.dumps(ckpt))                        # the cache is not pickled
    with torch.no_grad():
        copy.state_dict[name].zero_()
    assert copy.digest() == tensors_sha256(copy.state_dict)[:12] != ckpt.digest()


def test_an_explainer_reports_the_digest_of_its_network_and_hashes_nothing_per_explanation(monkeypatch):
    from explainers.fastshap import FastShapExplanation, FastShapParts

    class MeanScorer:
        device, num_targets, chunk_size = torch.device("cpu"), 1, 8

        def __call__(self, images):
            return images.mean((1, 2, 3))[:, None]

    ckpt = small_parts_checkpoint()
    before = FastShapParts(MeanScorer(), weights=ckpt, check_weights=False)
    image, regions = torch.rand(3, 24, 24), torch.zeros(5, 24, 24, dtype=torch.bool)
    for i in range(5):
        regions[i, 4 * i:4 * i + 4, 8:16] = True
    calls = counting_hash(monkeypatch)
    exp = before.explain(image, regions)
    assert type(exp) is FastShapExplanation and exp.n_explainer_forward == 1 and exp.n_forward == 2
    first = exp.options
    assert first["weights_sha256"] == tensors_sha256(ckpt.state_dict)[:12]
    assert before.explain(image, regions, seed=1).options["weights_sha256"] == first["weights_sha256"]
    assert calls == [] and first["n_explainer_forward"] == 1      # the digest was hashed when the explainer was built
    with torch.no_grad():
        ckpt.state_dict["head.4.bias"].add_(1.0)
    after = FastShapParts(MeanScorer(), weights=ckpt, check_weights=False)
    assert after.explain(image, regions).options["weights_sha256"] == tensors_sha256(ckpt.state_dict)[:12]
    assert after.net is not before.net and before.explain(image, regions).options == first    # before keeps its own
