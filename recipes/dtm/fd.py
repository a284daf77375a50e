"""The Fréchet distance of generated DTM images, as the reference measures it: a small classifier trained on
the dataset's own images (cached beside the data) supplies the features; generated levels are compared
with the training images of the selected classes. Also the floor (held-out real images) and ceiling
(uniform random images) of the same distance, measured in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from genflow.data import load_split
from genflow.metrics.frechet import features, frechet_distance, load_or_train_classifier

__all__ = ["FrechetScorer", "image_levels"]


def image_levels(images: torch.Tensor, levels: int, threshold: float) -> torch.Tensor:
    """uint8 images (B, ...) -> integer levels (B, pixels): binary (value / 255 > threshold) for
    1 level, else round(value / 255 x levels)."""
    x = images.reshape(images.shape[0], -1).float() / 255.0
    return (x > threshold).long() if levels == 1 else torch.round(x * levels).long()


class FrechetScorer:
    """Fréchet distances against one dataset's training images, in one representation (grey levels, threshold).

    `to_images(levels)`: generated levels (n, pixels) -> float images (n, H, W[, C]) in [0, 1]. The feature
    classifier is trained on first use on the training images (its held-out accuracy on val, so scoring
    never reads test unless asked for test) and cached in the dataset directory."""

    def __init__(self, data_dir: str | Path, *, levels: int, threshold: float, classes: list[int] | None,
                 classifier_epochs: int, to_images: Callable[[torch.Tensor], np.ndarray]):
        self.data_dir, self.levels, self.threshold, self.classes = Path(data_dir), levels, threshold, classes
        self.classifier_epochs, self.to_images = classifier_epochs, to_images
        self._classifier = None
        self.classifier_facts: dict | None = None
        self._real: dict[str, dict[str, np.ndarray]] = {}  # split -> classifier input and labels
        self._real_features: dict[str, np.ndarray] = {}

    def classifier(self):
        """The cached feature classifier (trained on first use)."""
        if self._classifier is None:
            train, val = self.real_images("train"), self.real_images("val")
            cache = self.data_dir / f"fd_classifier_L{self.levels}_t{self.threshold:g}.pt"
            self._classifier, self.classifier_facts = load_or_train_classifier(
                cache, train["input"], train["label"], val["input"], val["label"], epochs=self.classifier_epochs)
        return self._classifier

    def real_images(self, split: str) -> dict[str, np.ndarray]:
        """A split's images as classifier input and its labels, read once."""
        if split not in self._real:
            data = load_split(self.data_dir, split, ["image", "label"])
            levels = image_levels(torch.from_numpy(data["image"]), self.levels, self.threshold)
            self._real[split] = {"input": self.classifier_input(levels), "label": data["label"]}
        return self._real[split]

    def classifier_input(self, levels: torch.Tensor) -> np.ndarray:
        """Levels (n, pixels) -> the classifier's input (n, channels, H, W)."""
        images = self.to_images(levels)
        return images[:, None] if images.ndim == 3 else np.moveaxis(images, -1, 1)

    def _selected(self, split: str) -> np.ndarray:
        """Classifier features of a split's real images (of the selected classes)."""
        if split not in self._real_features:
            self._real_features[split] = features(self.classifier(), self.real_images(split)["input"])
        feats, labels = self._real_features[split], self.real_images(split)["label"]
        return feats if not self.classes else feats[np.isin(labels, self.classes)]

    def frechet(self, levels: torch.Tensor) -> float:
        """Fréchet distance of generated levels to the (selected classes of the) training set."""
        return frechet_distance(features(self.classifier(), self.classifier_input(levels)), self._selected("train"))

    def reference(self, n: int, *, seed: int = 0, split: str = "test") -> dict[str, float]:
        """Floor (n real images of `split` vs train) and ceiling (n uniform random level images vs train)."""
        rng = np.random.default_rng(seed)
        held_out = self._selected(split)
        floor = frechet_distance(held_out[rng.permutation(len(held_out))[:n]], self._selected("train"))
        noise = torch.from_numpy(rng.binomial(self.levels, 0.5, size=(n, self._pixels())))
        return {"fd_floor": floor, "fd_noise_ceiling": self.frechet(noise)}

    def _pixels(self) -> int:
        return int(self.real_images("train")["input"][0].size)
