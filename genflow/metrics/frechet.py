"""Fréchet distance of images in the feature space of a small classifier trained on the real data.

FID's Inception network cannot be downloaded here, and it is not made for 28 x 28 binary digits
anyway. genflow instead trains :class:`FeatureClassifier` (two conv layers + a 128-unit feature
layer, ~0.1 M parameters) once on the training split, in exactly the representation the generative
model sees (e.g. binarised), caches its weights next to the dataset, and reports

    FD = |μ_a - μ_b|² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^½)

between the 128-d features of two image sets. A model's figure means little alone: report it beside
the *floor* (real test images vs the training set, same count: the best a perfect model can get)
and the *ceiling* (uniform random bits vs the training set).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genflow.errors import CheckpointError

__all__ = ["FeatureClassifier", "frechet_distance", "train_feature_classifier", "load_or_train_classifier", "features"]


class FeatureClassifier(nn.Module):
    """(B, C, H, W) images in [0, 1] -> logits; `features` gives the 128-d penultimate layer."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int, feature_dim: int = 128):
        super().__init__()
        self.shape = (channels, height, width)
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def train_feature_classifier(images: np.ndarray, labels: np.ndarray, *, epochs: int = 2, batch_size: int = 128,
                             seed: int = 0) -> tuple[FeatureClassifier, dict]:
    """Train on images (N, C, H, W) float32 in [0, 1] and integer labels; returns (model, facts)."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    num_classes = int(y.max()) + 1
    model = FeatureClassifier(*x.shape[1:], num_classes=max(num_classes, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    with torch.enable_grad():  # also when called from evaluation code under no_grad
        _fit(model, optimizer, x, y, epochs, batch_size, generator)
    model.eval()
    return model, {"epochs": epochs, "seconds": round(time.perf_counter() - start, 1), "num_classes": num_classes}


def _fit(model, optimizer, x, y, epochs, batch_size, generator) -> None:
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


@torch.no_grad()
def features(model: FeatureClassifier, images: np.ndarray | torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """(N, 128) float64 features of images (N, C, H, W) in [0, 1]."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    return torch.cat([model.features(part) for part in x.split(batch_size)]).double().numpy()


@torch.no_grad()
def accuracy(model: FeatureClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    predicted = torch.cat([model(part).argmax(1) for part in x.split(1000)]).numpy()
    return float((predicted == labels).mean())


def load_or_train_classifier(cache: Path, train_images: np.ndarray, train_labels: np.ndarray,
                             val_images: np.ndarray, val_labels: np.ndarray, **train_options) -> tuple[FeatureClassifier, dict]:
    """The cached classifier at `cache` (safe load: tensors only), or train it on the training images
    (its accuracy on the validation images is kept beside it) and cache it."""
    if cache.is_file():
        try:
            blob = torch.load(cache, map_location="cpu", weights_only=True)
            model = FeatureClassifier(*blob["shape"].tolist(), num_classes=int(blob["num_classes"]))
            model.load_state_dict(blob["state"])
            model.eval()
            return model, {"cached": str(cache), "val_accuracy": float(blob["val_accuracy"])}
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{cache}: not a genflow feature classifier ({err}); delete it to retrain") from None
    model, facts = train_feature_classifier(train_images, train_labels, **train_options)
    facts["val_accuracy"] = accuracy(model, val_images, val_labels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save({"state": model.state_dict(), "shape": torch.tensor(model.shape), "num_classes": torch.tensor(model.head.out_features),
                "val_accuracy": torch.tensor(facts["val_accuracy"])}, tmp)
    tmp.replace(cache)
    facts["cached"] = str(cache)
    return model, facts


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, d) and b (M, d)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrtm_psd(cov_a)
    middle = _sqrtm_psd(root_a @ cov_b @ root_a)  # (Σa Σb)^½ has the trace of (Σa^½ Σb Σa^½)^½
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(middle))
