"""Demo model training: the classifier learns within seconds; saved models load back identically."""
import torch

from detection.models.scene_classifier import (
    ClassifierTraining,
    SceneNet,
    fold_input_normalisation,
    load_classifier,
    save_classifier,
    train_scene_classifier,
)


def _toy(n: int, seed: int):
    """Images with a red square (label 0) and/or a blue bar (label 1) on noise."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 3, 32, 32, generator=g) * 100).to(torch.uint8)
    labels = torch.rand(n, 2, generator=g) < 0.5
    images[labels[:, 0], :, 4:14, 4:14] = torch.tensor([250, 10, 10], dtype=torch.uint8).view(3, 1, 1)
    images[labels[:, 1], :, 20:24, :] = torch.tensor([10, 10, 250], dtype=torch.uint8).view(3, 1, 1)
    return images, labels


def test_classifier_learns_in_seconds(tmp_path):
    images, labels = _toy(128, 0)
    cfg = ClassifierTraining(epochs=8, batch_size=16, lr=5e-3, input_size=(32, 32), width=8)
    clf, history = train_scene_classifier(images, labels, ["square", "bar"], cfg, seed=0)
    assert history[-1] < 0.5 * history[0]
    test_images, test_labels = _toy(64, 1)
    pred = clf.classify(test_images.float() / 255) >= 0.5
    assert (pred == test_labels).float().mean() > 0.9

    path = save_classifier(clf, tmp_path / "clf.pt")
    loaded = load_classifier(path, device="cpu")
    assert loaded.class_names == ["square", "bar"] and loaded.multi_label
    x = test_images[:8].float() / 255
    assert torch.allclose(loaded.classify(x), clf.classify(x), atol=1e-6)


def test_folded_input_normalisation_gives_the_same_logits():
    torch.manual_seed(0)
    net = SceneNet(3, width=8)
    for m in net.modules():                       # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.rand(4, 3, 48, 64)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    expected = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    folded = fold_input_normalisation(net, mean, std)
    assert torch.allclose(folded(x), expected, atol=1e-5)
