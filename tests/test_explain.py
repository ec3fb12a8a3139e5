"""Grad-CAM (braintumor.model.explain): shape and range, and that it points at the evidence on a toy problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from braintumor.model.explain import grad_cam, overlay

SIZE = 32  # toy image side
SQUARE = 6  # side of the planted bright square


class ToyNet(nn.Module):
    """conv layers -> `features` (the Grad-CAM layer) -> global average pool -> linear."""

    def __init__(self, classes: int = 2, stride: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, stride=stride), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)).mean(dim=(2, 3)))


def make_batch(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images; class 1 gets a bright SQUARE x SQUARE patch at a random place. Returns images (n, 1, S, S),
    labels (n,) and each patch's top-left corner (n, 2) (row, col; -1 for class 0)."""
    images = 0.3 * torch.rand(n, 1, SIZE, SIZE, generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    corners = torch.full((n, 2), -1)
    for i in torch.nonzero(labels).flatten().tolist():
        r, c = torch.randint(0, SIZE - SQUARE + 1, (2,), generator=gen).tolist()
        images[i, 0, r : r + SQUARE, c : c + SQUARE] = 1.0
        corners[i] = torch.tensor([r, c])
    return images, labels, corners


@pytest.fixture(scope="module")
def trained_toy() -> ToyNet:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest, and the test machine may be busy
    try:
        return _train_toy()
    finally:
        torch.set_num_threads(threads)


def _train_toy() -> ToyNet:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = ToyNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(150):
        images, labels, _ = make_batch(gen, 32)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    images, labels, _ = make_batch(torch.Generator().manual_seed(123), 200)
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95, f"the toy model did not learn the task (accuracy {accuracy:.2f})"
    return model


def test_heat_map_has_the_input_size_and_lies_in_0_1():
    torch.manual_seed(1)
    model = ToyNet(classes=3, stride=2)  # the features are 20x14: the map must be upsampled to 40x28
    image = torch.rand(1, 1, 40, 28)
    for target in (None, 0, 1, 2):
        cam, explained = grad_cam(model, model.features, image, target=target)
        assert isinstance(cam, np.ndarray)
        assert cam.shape == (40, 28)
        assert cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6
        assert np.isfinite(cam).all()
        if target is None:
            with torch.no_grad():
                assert explained == int(model(image).argmax(1))
        else:
            assert explained == target


def test_grad_cam_leaves_the_model_as_it_found_it():
    torch.manual_seed(2)
    model = ToyNet()
    model.train()
    image = torch.rand(1, 1, SIZE, SIZE)
    before = [p.detach().clone() for p in model.parameters()]
    grad_cam(model, model.features, image)
    assert model.training  # mode restored
    assert not model.features._forward_hooks  # hook removed
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights untouched
    assert not image.requires_grad  # the caller's tensor is not changed


def test_peak_lies_on_the_planted_square(trained_toy):
    images, labels, corners = make_batch(torch.Generator().manual_seed(7), 40)
    positives = torch.nonzero(labels).flatten().tolist()[:8]
    assert len(positives) >= 5
    margin = 2
    for i in positives:
        cam, explained = grad_cam(trained_toy, trained_toy.features, images[i : i + 1], target=1)
        assert explained == 1
        assert cam.max() == pytest.approx(1.0)
        peak_r, peak_c = np.unravel_index(cam.argmax(), cam.shape)
        r, c = corners[i].tolist()
        assert r - margin <= peak_r < r + SQUARE + margin and c - margin <= peak_c < c + SQUARE + margin, (
            f"image {i}: Grad-CAM peak at ({peak_r}, {peak_c}), square at rows {r}..{r + SQUARE - 1}, "
            f"cols {c}..{c + SQUARE - 1}"
        )
        # Most of the heat is on or near the square, not spread over the background.
        near = np.zeros_like(cam, dtype=bool)
        near[max(r - margin, 0) : r + SQUARE + margin, max(c - margin, 0) : c + SQUARE + margin] = True
        assert cam[near].sum() > cam[~near].sum()


def test_overlay_is_an_rgb_uint8_picture():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    cam = rng.random((20, 30))
    picture = overlay(gray, cam)
    assert picture.shape == (20, 30, 3)
    assert picture.dtype == np.uint8
    # Where the heat map is cold the jet colour map is blue: blue outweighs red there, and the reverse where hot.
    cold, hot = (
        overlay(np.full((4, 4), 128, np.uint8), np.zeros((4, 4))),
        overlay(np.full((4, 4), 128, np.uint8), np.ones((4, 4))),
    )
    assert (cold[..., 2] > cold[..., 0]).all()
    assert (hot[..., 0] > hot[..., 2]).all()
