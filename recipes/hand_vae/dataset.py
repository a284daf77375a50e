"""Hand poses -> shards: generated (`genflow data make hands`) or a user's MANO-style .npz files
(`genflow data import hands DIR`), each with splits train / val / test."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genflow.data.npz_import import ImportSummary
from genflow.data.shards import ShardWriter, check_split_fractions
from genflow.errors import ConfigError, DataSourceError
from genflow_recipes.hand_vae.skeleton import FAMILIES, POSE_DIM, make_hand_poses

__all__ = ["GENERATORS", "HandImportSummary", "SPLIT_MODES", "make_hands_dataset", "read_hands_npz", "import_hands_npz",
           "sets_table"]


def _write(out_dir: str | Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], *, source: dict, attrs: dict,
           overwrite: bool) -> dict:
    fields = {"pose": ((POSE_DIM,), "float32"), "family": ((2,), "int64")}
    with ShardWriter(out_dir, fields, source=source, attrs=attrs, overwrite=overwrite) as writer:
        for split, (poses, families) in splits.items():
            writer.write(split, pose=poses.astype(np.float32), family=families.astype(np.int64))
    return writer.close()


def _split(n: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    return {"train": order[n_val + n_test:], "val": order[:n_val], "test": order[n_val:n_val + n_test]}


GENERATORS = ("grasps", "families")


def make_hands_dataset(out_dir: str | Path, n: int = 200_000, seed: int = 0, overwrite: bool = False,
                       command: str | None = None, generator: str = "grasps") -> dict:
    """Procedural poses -> shards with splits train / val / test (80 / 10 / 10).

    `generator`: "grasps" (joint angles solved to touch objects, :mod:`genflow_recipes.hand_vae.grasps`) or
    "families" (linear finger synergies + noise, :func:`make_hand_poses`). The manifest's attrs name it
    and its family names, which the `family` field indexes."""
    if generator == "grasps":
        from genflow_recipes.hand_vae.grasps import GRASP_FAMILIES as names, make_grasp_poses as make
    elif generator == "families":
        names, make = FAMILIES, make_hand_poses
    else:
        raise ValueError(f"hand pose generator {generator!r}: expected one of {', '.join(GENERATORS)}")
    poses, families = make(n, seed)
    parts = _split(n, seed + 1, 0.1, 0.1)
    module = "genflow_recipes.hand_vae.grasps" if generator == "grasps" else "genflow_recipes.hand_vae.skeleton"
    source = {"generator": f"{module} (procedural, MANO-style)", "command": command or "genflow data make-hands"}
    return _write(out_dir, {k: (poses[i], families[i]) for k, i in parts.items()}, source=source,
                  attrs={"generator": generator, "families": list(names),
                         "joints": "index, middle, pinky, ring, thumb x 3; left then right"},
                  overwrite=overwrite)


# --- import of a user's .npz files ---------------------------------------------------------------------
# Left / right key pairs, first match wins: SMPL-X exports (one file per capture set), then older MANO names.
_PAIRS = (("lhand_pose", "rhand_pose"), ("lhand", "rhand"), ("left_hand_pose", "right_hand_pose"))
_SINGLE = ("hand_pose", "hand_poses", "poses", "pose")
_SPLITS = ("train", "val", "test")
SPLIT_MODES = ("set", "frame", "given")
SPLITS_REPORT_NAME = "splits.txt"


def _read_key(npz, key: str, path: Path) -> np.ndarray:
    """One array of an open npz; only the keys asked for are read, so other (pickled, string) keys never matter."""
    try:
        array = np.asarray(npz[key])
    except ValueError as err:
        if "pickle" in str(err):
            raise DataSourceError(f"{path}: {key!r} is an object array (needs pickle, refused); expected numbers") from None
        raise DataSourceError(f"{path}: not a readable npz (cannot read {key!r}: {err})") from None
    except Exception as err:  # noqa: BLE001 - a corrupt member raises BadZipFile, zlib.error, EOFError, ...: skip the file
        raise DataSourceError(f"{path}: not a readable npz ({type(err).__name__} reading {key!r}: {err})") from None
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataSourceError(f"{path}: {key!r} holds {array.dtype} values; expected axis-angle numbers")
    return array


def _rows(array: np.ndarray) -> np.ndarray | None:
    """(N, ...) -> (N, prod(...)) float64; None for fewer than two dimensions."""
    return np.asarray(array, dtype=np.float64).reshape(len(array), -1) if array.ndim >= 2 else None


def read_hands_npz(path: str | Path) -> np.ndarray:
    """One MANO-style npz -> (N, 90) float32, left hand then right.

    Keys lhand_pose / rhand_pose (SMPL-X exports, beside body keys that are ignored), lhand / rhand or
    left_hand_pose / right_hand_pose, each (N, 45) or (N, 15, 3); or one (N, 90) / (N, 30, 3) array.
    Only those keys are read. Raises DataSourceError (naming the file and what was expected)."""
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - not a zip, truncated, ...: the caller skips the file
        raise DataSourceError(f"{path}: not a readable npz ({type(err).__name__}: {err})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataSourceError(f"{path}: not a readable npz (a single .npy array; expected named arrays)")
    with npz:
        keys = list(npz.files)
        pose = None
        for left_key, right_key in _PAIRS:
            if left_key in keys and right_key in keys:
                raw = {k: _read_key(npz, k, path) for k in (left_key, right_key)}
                left, right = _rows(raw[left_key]), _rows(raw[right_key])
                if left is None or right is None or left.shape[1] != 45 or right.shape[1] != 45 or len(left) != len(right):
                    raise DataSourceError(f"{path}: {left_key} / {right_key} have shapes {raw[left_key].shape} / "
                                          f"{raw[right_key].shape}; expected (N, 45) or (N, 15, 3) each")
                pose = np.concatenate([left, right], axis=1)
                break
        if pose is None:
            candidates = [k for k in _SINGLE if k in keys] or (keys if len(keys) == 1 else [])
            if not candidates:
                raise DataSourceError(f"{path}: no hand poses; expected keys lhand_pose + rhand_pose, lhand + rhand, "
                                      f"left_hand_pose + right_hand_pose, or one (N, 90) array "
                                      f"(found: {', '.join(keys) or 'nothing'})")
            raw = _read_key(npz, candidates[0], path)
            pose = _rows(raw) if raw.ndim >= 2 else np.asarray(raw, dtype=np.float64).reshape(1, -1)
            if pose.shape[1] != POSE_DIM:
                raise DataSourceError(f"{path}: {candidates[0]!r} has shape {raw.shape}; expected (N, 90) or (N, 30, 3)")
    if not np.all(np.isfinite(pose)):
        raise DataSourceError(f"{path}: hand poses contain NaN or Inf")
    if len(pose) and np.abs(pose).max() > 4 * np.pi:
        raise DataSourceError(f"{path}: rotation vectors up to {np.abs(pose).max():.1f} rad; expected axis-angle in radians")
    return pose.astype(np.float32)


@dataclass
class HandImportSummary(ImportSummary):
    """An ImportSummary plus where each set went.

    Attributes:
        split: The split mode used: "set", "frame", "given" or "splits" (the source's frame lists).
        sets: Set name (the file's path without ``.npz``) -> split -> frames written, in table order.
        warning: One line when the split leaks neighbouring frames across splits, else None.
    """

    split: str = "set"
    sets: dict[str, dict[str, int]] = field(default_factory=dict)
    warning: str | None = None


@dataclass
class _SetFile:
    name: str  # set name: path without .npz, relative to DIR (split=given: to DIR/<split>)
    path: Path
    split: str | None = None  # split=given: the folder it lies in
    frames: int = 0


def _set_name(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _npz_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.npz") if p.is_file())


_OVERSHOOT = 1.25  # split=set: a held-out split may end at most this far above its share of the frames, except
# when its smallest set alone is larger


def _assign_sets(frames: list[int], *, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Split of each set (whole sets), so that val and test hold close to their fractions of the frames.

    Greedy over a seeded shuffle: a set goes to the held-out split it brings closest to its target,
    unless that overshoots the target by more than a quarter; else to train. Then every split with a
    non-zero fraction (and train) gets at least one set: the smallest set of the split holding most
    sets moves there."""
    total = sum(frames)
    targets = {"test": test_fraction * total, "val": val_fraction * total}
    held = {"test": 0, "val": 0}
    where = ["train"] * len(frames)
    for i in np.random.default_rng(seed).permutation(len(frames)):
        gains = {s: abs(targets[s] - held[s]) - abs(targets[s] - held[s] - frames[i]) for s in held}
        best = max(gains, key=gains.get)
        if gains[best] > 0 and held[best] + frames[i] <= _OVERSHOOT * targets[best]:
            where[i], held[best] = best, held[best] + frames[i]
    needed = ["train"] + [s for s in ("val", "test") if targets[s] > 0]
    for split in needed:
        if split not in where:
            donor = max(needed, key=lambda s: (where.count(s), s == "train"))
            where[min((i for i in range(len(where)) if where[i] == donor), key=lambda i: frames[i])] = split
    return where


def _read_samples_files(splits_dir: Path) -> dict[str, dict[str, list[int]]]:
    """The source's ``{train,val,test}_samples.json``: split -> set name -> frame indices."""
    if not splits_dir.is_dir():
        raise DataSourceError(f"{splits_dir}: not a directory; splits= expects the folder holding "
                              "train_samples.json, val_samples.json and test_samples.json")
    out = {}
    for split in _SPLITS:
        path = splits_dir / f"{split}_samples.json"
        if not path.is_file():
            raise DataSourceError(f"{path}: missing; splits= expects train_samples.json, val_samples.json and test_samples.json")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise DataSourceError(f"{path}: not JSON ({err})") from None
        if not isinstance(data, dict):
            raise DataSourceError(f"{path}: expected an object mapping set names to lists of frame indices")
        for name, indices in data.items():
            if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
                raise DataSourceError(f"{path}: set {name!r}: expected a list of integer frame indices")
        out[split] = data
    return out


def sets_table(sets: dict[str, dict[str, int]]) -> str:
    """Where each set went, one line per set: ``set  frames  split`` (frames per split when a set is in several)."""
    width = max([len("set")] + [len(name) for name in sets])
    lines = [f"{'set':<{width}}  {'frames':>9}  split"]
    for name, parts in sets.items():
        where = next(iter(parts)) if len(parts) == 1 else ", ".join(f"{s} {n}" for s, n in parts.items())
        lines.append(f"{name:<{width}}  {sum(parts.values()):>9}  {where}")
    return "\n".join(lines)


_LEAK = "neighbouring, near-identical frames of one sequence leak from train into val / test"


def import_hands_npz(src_dir: str | Path, out_dir: str | Path, *, split: str | None = None,
                     splits_dir: str | Path | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                     seed: int = 42, limit: int | None = None, overwrite: bool = False, command: str | None = None,
                     progress=None, **_ignored) -> HandImportSummary:
    """Every *.npz under `src_dir` (one capture set of many frames each) -> shards (train / val / test).

    `split`: "set" (whole files to train / val / test, close to the fractions of the frames; the default),
    "frame" (frames at random: neighbouring frames leak across splits), "given" (`src_dir/{train,val,test}/`
    as they are; the default when those three folders exist). `splits_dir`: the source's folder of
    `{train,val,test}_samples.json` (set -> frame indices into `src_dir/<set>.npz`), kept exactly.
    Unreadable or malformed files are skipped and reported (`skipped.txt`); none readable is an error.
    Where each set went is in the manifest's attrs["sets"], `splits.txt` and the summary. Each file is
    read twice (to count and check its frames, then to write them), one file in memory at a time."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    check_split_fractions(val_fraction, test_fraction, "import hands")
    if split is not None and split not in SPLIT_MODES:
        raise ConfigError(f"import hands: split={split!r}; expected one of {', '.join(SPLIT_MODES)}")
    if not src_dir.is_dir():
        raise DataSourceError(f"{src_dir}: {'not a directory' if src_dir.exists() else 'does not exist'}; "
                              "expected a directory of hand-pose .npz files")
    samples = None
    if splits_dir is not None:
        if split is not None:
            raise ConfigError(f"import hands: split={split} and splits={splits_dir}: give one (splits= keeps the "
                              "source's frame lists)")
        if limit is not None:
            raise ConfigError("import hands: limit does not apply with splits= (the frame lists name their files)")
        mode, samples = "splits", _read_samples_files(Path(splits_dir))
    elif split is None:
        mode = "given" if all((src_dir / s).is_dir() for s in _SPLITS) else "set"
    else:
        mode = split

    # Candidates, and readable files that this mode does not use (named as skipped, never dropped silently).
    skipped: list[tuple[str, str]] = []
    if mode == "given":
        candidates = []
        for s in _SPLITS:
            if not (src_dir / s).is_dir():
                raise DataSourceError(f"{src_dir / s}: missing; split=given expects DIR/train, DIR/val and DIR/test "
                                      "folders of .npz files")
            candidates += [_SetFile(_set_name(p, src_dir / s), p, s) for p in _npz_under(src_dir / s)[:limit]]
        inside = {c.path for c in candidates}
        skipped += [(p.relative_to(src_dir).as_posix(), "outside train/, val/ and test/ (split=given)")
                    for p in _npz_under(src_dir) if p not in inside and p.relative_to(src_dir).parts[0] not in _SPLITS]
    elif mode == "splits":
        names = list(dict.fromkeys(name for s in _SPLITS for name in samples[s]))
        candidates = [_SetFile(name, src_dir / f"{name}.npz") for name in names]
        for c in candidates:
            if not c.path.is_file():
                first = next(s for s in _SPLITS if c.name in samples[s])
                raise DataSourceError(f"{c.path}: missing; {Path(splits_dir) / f'{first}_samples.json'} names set {c.name!r}")
        used = {c.path.resolve() for c in candidates}
        skipped += [(p.relative_to(src_dir).as_posix(), f"not named in {splits_dir}/*_samples.json")
                    for p in _npz_under(src_dir) if p.resolve() not in used]
    else:
        candidates = [_SetFile(_set_name(p, src_dir), p) for p in _npz_under(src_dir)[:limit]]
    if not candidates:
        raise DataSourceError(f"{src_dir}: no .npz files found")
    num_files = len(candidates) + len(skipped)

    # Pass 1: read and check every file, keep its frame count.
    readable = []
    for i, c in enumerate(candidates):
        try:
            c.frames = len(read_hands_npz(c.path))
            readable.append(c)
        except DataSourceError as err:
            if mode == "splits":  # the frame lists index this file: it cannot be left out
                raise DataSourceError(f"{err} (named in {splits_dir}/*_samples.json)") from None
            skipped.append((c.path.relative_to(src_dir).as_posix(), str(err).split(": ", 1)[-1]))
        if progress:
            progress(i + 1, 2 * len(candidates))
    if not readable:
        first = skipped[0] if skipped else ("", "")
        raise DataSourceError(f"{src_dir}: none of {len(candidates)} .npz files holds hand poses "
                              f"(first: {first[0]}: {first[1]})")

    # The plan: per readable file, split -> frame indices (None: all its frames).
    warning = None
    if mode == "set":
        needed = 1 + (val_fraction > 0) + (test_fraction > 0)
        if len(readable) < needed:
            raise DataSourceError(f"{src_dir}: {len(readable)} readable hand-pose .npz file(s); split=set puts whole "
                                  f"files in train / val / test and needs at least {needed}; use split=frame to split "
                                  "their frames at random")
        where = _assign_sets([c.frames for c in readable], val_fraction=val_fraction, test_fraction=test_fraction,
                             seed=seed)
        plans = [{s: None} for s in where]
    elif mode == "given":
        plans = [{c.split: None} for c in readable]
        for s in _SPLITS:
            if not any(c.split == s for c in readable):
                raise DataSourceError(f"{src_dir / s}: no readable hand-pose .npz file; split=given needs frames in "
                                      "each of train/, val/ and test/")
    elif mode == "frame":
        warning = f"split=frame: {_LEAK}; split=set keeps each file (set) in one split"
        label = np.zeros(sum(c.frames for c in readable), dtype=np.int8)  # index into _SPLITS
        for k, indices in _split(len(label), seed, val_fraction, test_fraction).items():
            label[indices] = _SPLITS.index(k)
        offsets = np.cumsum([0] + [c.frames for c in readable])
        plans = [{s: np.flatnonzero(label[lo:hi] == k) for k, s in enumerate(_SPLITS)}
                 for lo, hi in zip(offsets[:-1], offsets[1:])]
    else:
        warning = f"splits= keeps the source's split, which is by frame: every set is in train, val and test, so {_LEAK}"
        plans = []
        for c in readable:
            plan = {}
            for s in _SPLITS:
                indices = np.asarray(samples[s].get(c.name, []), dtype=np.int64)
                bad = indices[(indices < 0) | (indices >= c.frames)]
                if len(bad):
                    raise DataSourceError(f"{Path(splits_dir) / f'{s}_samples.json'}: set {c.name!r} frame index {bad[0]} "
                                          f"out of range; {c.path} has {c.frames} frames (0..{c.frames - 1})")
                plan[s] = indices
            plans.append(plan)

    # Where each set goes, in table order: by its first split, then by name.
    sets: dict[str, dict[str, int]] = {}
    for c, plan in zip(readable, plans):
        for s, indices in plan.items():
            n = c.frames if indices is None else len(indices)
            if n:
                sets.setdefault(c.name, dict.fromkeys(_SPLITS, 0))[s] += n
    sets = {name: {s: n for s, n in parts.items() if n} for name, parts in sets.items()}
    sets = dict(sorted(sets.items(), key=lambda kv: (_SPLITS.index(next(iter(kv[1]))), kv[0])))

    # Pass 2: write.
    fields = {"pose": ((POSE_DIM,), "float32"), "family": ((2,), "int64")}
    source = {"npz_dir": str(src_dir), "command": command or f"genflow data import hands {src_dir}"}
    if splits_dir is not None:
        source["splits_dir"] = str(splits_dir)
    attrs = {"files": num_files, "skipped": len(skipped), "split": mode, "val_fraction": val_fraction,
             "test_fraction": test_fraction, "limit": limit, "splits_report": SPLITS_REPORT_NAME,
             "sets": {name: {"split": "+".join(parts), "frames": sum(parts.values()), **(parts if len(parts) > 1 else {})}
                      for name, parts in sets.items()}}
    counts = dict.fromkeys(_SPLITS, 0)
    with ShardWriter(out_dir, fields, seed=seed, source=source, attrs=attrs, overwrite=overwrite) as writer:
        for s in _SPLITS:  # registers every split even if one stays empty
            writer.write(s, pose=np.empty((0, POSE_DIM), np.float32), family=np.empty((0, 2), np.int64))
        for i, (c, plan) in enumerate(zip(readable, plans)):
            pose = read_hands_npz(c.path)
            for s, indices in plan.items():
                part = pose if indices is None else pose[indices]
                if len(part):
                    writer.write(s, pose=part, family=np.full((len(part), 2), -1, np.int64))  # family unknown for real data
                    counts[s] += len(part)
            if progress:
                progress(len(candidates) + i + 1, 2 * len(candidates))
        # written before the manifest (on leaving the block): a dataset with a manifest has both reports
        (out_dir / SPLITS_REPORT_NAME).write_text("set\tsplit\tframes\n" + "".join(
            f"{name}\t{s}\t{n}\n" for name, parts in sets.items() for s, n in parts.items()))
        report = out_dir / "skipped.txt"
        report.write_text("".join(f"{name}\t{reason}\n" for name, reason in sorted(skipped)))
    return HandImportSummary(converted=len(readable), skipped=sorted(skipped), out_dir=out_dir, splits=counts,
                             skipped_report=report, num_files=num_files, manifest=writer.close(), split=mode,
                             sets=sets, warning=warning)
