"""namo's goal poses (recipes/namo/poses.py, numpy + scipy) against OpenCV, which the source's inference uses.

    PY benchmarks/parity/namo_poses_opencv.py [--n 2000] [--seed 0]

PY: a Python with numpy, scipy and OpenCV (`pip install opencv-python-headless`; genflow does not depend on
it). On `--n` rasterised rotated rectangles (random size, angle and place in a 64 x 64 mask; every fifth
sample also gets a second, separate blob or is left empty), it compares which samples are kept (OpenCV:
8-connected components, one blob) and, for the kept ones, the minimum-area rectangle's centre and the
long side's angle (the source's reading of `cv2.minAreaRect`: its angle, + 90 degrees when width <
height, modulo 180). poses.py is loaded from its file, so genflow need not be installed in PY.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import sys
from pathlib import Path

import numpy as np

SIZE = 64


def _poses_module():
    path = Path(__file__).resolve().parents[2] / "recipes" / "namo" / "poses.py"
    spec = importlib.util.spec_from_file_location("namo_poses", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _rectangle(rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    cx, cy = rng.uniform(16, 48, 2)
    length, width = sorted(rng.uniform(2, 14, 2))[::-1]
    angle = rng.uniform(-math.pi, math.pi)
    along = (cols - cx) * math.cos(angle) + (rows - cy) * math.sin(angle)
    across = -(cols - cx) * math.sin(angle) + (rows - cy) * math.cos(angle)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


def main() -> None:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    poses = _poses_module()
    rng = np.random.default_rng(args.seed)
    masks = []
    for i in range(args.n):
        mask = _rectangle(rng)
        if i % 10 == 5:
            mask[:] = False
        elif i % 10 == 0:
            mask[2:5, 2:5] = True  # a second blob in a corner the rectangles never reach
        masks.append(mask)
    masks = np.stack(masks)
    ours = poses.accept_proposals(masks[:, None])
    same_kept = same_pose = squares = 0
    worst = []
    for i, mask in enumerate(masks):
        image = mask.astype(np.uint8)
        labels = cv2.connectedComponentsWithStats(image)[0]
        kept = image.any() and labels <= 2
        same_kept += kept == bool(ours.accepted[i, 0])
        if not (kept and ours.accepted[i, 0]):
            continue
        contours, _ = cv2.findContours(image, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        (cx, cy), (w, h), angle = cv2.minAreaRect(max(contours, key=cv2.contourArea))
        theirs = angle + 90 if w < h else angle
        x, y, theta = ours.poses[i, 0]
        turn = abs((math.degrees(theta) - theirs + 90) % 180 - 90)
        centre = math.hypot(x - cx, y - cy)
        if abs(w - h) < 1e-6:
            squares += 1
        if turn < 1e-4 and centre < 1e-4:
            same_pose += 1
        else:
            worst.append((turn, centre, int(mask.sum()), abs(w - h) < 1e-6))
    kept_both = int((ours.accepted[:, 0]).sum())
    print(f"CPU: {platform.processor() or platform.machine()}; OpenCV {cv2.__version__}; {args.n} masks")
    print(f"same keep / drop decision: {same_kept} of {args.n}; kept by both: {kept_both}")
    print(f"same centre and angle (to 1e-4): {same_pose} of {kept_both}; squares among the kept: {squares}")
    off_squares = sum(square for *_, square in worst)
    print(f"differ: {len(worst)}, of which squares (OpenCV keeps its own 'width' side): {off_squares}; others: "
          f"{len(worst) - off_squares}, largest {max((t for t, _, _, sq in worst if not sq), default=0):.1f} deg / "
          f"{max((c for _, c, _, sq in worst if not sq), default=0):.3f} px")
    for turn, centre, pixels, square in sorted((w for w in worst if not w[3]), reverse=True):
        print(f"  differs: angle {turn:.1f} deg, centre {centre:.3f} px, {pixels} pixels{' (square)' if square else ''}")


if __name__ == "__main__":
    main()
