"""Typed configs: a default YAML per recipe, validated into dataclasses, with dotted overrides.

A recipe's config is a (nested) dataclass. `load_config(Cls, yaml_path, ["train.lr=3e-4", ...])`
reads the YAML, applies the overrides and checks every key and type; an unknown key is a
`ConfigError` that names the closest valid keys. A config class may declare
`aliases: ClassVar[dict[str, str]]` mapping a source system's key names (e.g. `base_lr`) to ours
(e.g. `train.lr`), so users' old command lines keep working.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from genflow.engine.precision import normalise_precision
from genflow.errors import ConfigError

__all__ = [
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "parse_override",
]


@dataclasses.dataclass
class TrainConfig:
    """Engine settings shared by every recipe (the `train:` section of a recipe config)."""

    epochs: int = 50
    batch_size: int = 32  # global batch per optimiser micro-step, split evenly over processes
    max_steps: int | None = None  # stop after this many optimiser steps (None: run all epochs)
    batches_per_epoch: int | None = None  # epoch length of a streamed training set (caps a finite one)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0  # floor of the cosine / linear decay
    grad_clip: float | None = 1.0  # max global grad norm; None disables clipping
    grad_accum_steps: int = 1
    ema_decay: float | None = None  # e.g. 0.999; evaluation and sampling then use the EMA weights
    # auto: bf16 where the GPU / CPU computes it natively, else fp32 (GPU without bf16: fp16). Also
    # no | fp32 | 32 | 32-true | bf16 | bf16-mixed | fp16 | 16-mixed (Lightning: fp16 on a GPU, bf16 on CPU).
    # The request is kept; the engine resolves it on the hardware of each run (and resume).
    precision: str | bool | int = "auto"  # bool / int: YAML's reading of `no` and `32`
    seed: int = 42
    eval_every: int = 5  # epochs
    checkpoint_every: int = 10  # epochs (`last` is written every epoch regardless)
    checkpoint_every_steps: int | None = None  # also refresh `last` every N steps, for long epochs
    best_metric: str = "val_loss"
    best_mode: Literal["min", "max"] = "min"
    log_every: int = 10  # steps between metrics.jsonl / TensorBoard train scalars
    num_workers: int = 0  # DataLoader worker processes per training process

    def __post_init__(self) -> None:
        at_least_one = ("epochs", "batch_size", "grad_accum_steps", "eval_every", "checkpoint_every", "log_every")
        for key in at_least_one + ("max_steps", "checkpoint_every_steps", "batches_per_epoch"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"config key 'train.{key}': expected an integer >= 1, got {value}")
        for key in ("lr", "weight_decay", "min_lr", "warmup_steps", "num_workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'train.{key}': expected a value >= 0, got {getattr(self, key)}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"config key 'train.grad_clip': expected a positive norm or null, got {self.grad_clip}")
        self.precision = normalise_precision(self.precision)
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"config key 'train.ema_decay': expected a value in (0, 1) or null, got {self.ema_decay}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp) if a is not Ellipsis)}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type hint `tp`; return it converted (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    bad = ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad
        return config_from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}': expected {len(args)} values ({_type_name(tp)}), got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def _unknown_key_error(key: str, valid: list[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(prefix + c for c in close)}?" if close else f"valid keys: {', '.join(prefix + v for v in valid)}"
    return ConfigError(f"unknown config key '{prefix}{key}': {hint}")


def config_from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, checking keys and types.

    Raises:
        ConfigError: unknown key (with the closest valid ones), or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key_error(str(key), list(fields), prefix)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': {exc}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (tuples as lists) of a config dataclass, for saving as YAML."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(cfg)


def parse_override(text: str) -> tuple[str, Any]:
    """`"train.lr=3e-4"` -> `("train.lr", 0.0003)`; the value is read as YAML (so `null`, `[1,2]` work)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{text}': expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type) -> dict[str, Any]:
    """Apply dotted `key=value` overrides (and `cls.aliases`) to a nested config dict, in place."""
    aliases: dict[str, str] = getattr(cls, "aliases", {}) or {}
    for text in overrides:
        key, value = parse_override(text)
        key = aliases.get(key, key)
        node, node_cls, parts = data, cls, key.split(".")
        for depth, part in enumerate(parts):
            hints = get_type_hints(node_cls)
            if part not in hints:
                prefix = ".".join(parts[:depth]) + ("." if depth else "")
                valid = list(hints) + ([a for a in aliases] if depth == 0 else [])
                raise _unknown_key_error(part, valid, prefix)
            field_type = hints[part]
            if depth == len(parts) - 1:
                node[part] = value
            else:
                if not _is_dataclass_type(field_type):
                    raise ConfigError(f"config key '{'.'.join(parts[: depth + 1])}' is a {_type_name(field_type)}, not a section")
                node = node.setdefault(part, {})
                node_cls = field_type
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Read a YAML config (or start from the dataclass defaults), apply overrides, validate.

    Args:
        cls: the recipe's config dataclass.
        path: YAML file; its keys may be a subset (missing keys take the dataclass defaults).
        overrides: dotted `key.sub=value` strings, applied after the file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    data = apply_overrides(data, list(overrides or []), cls)
    try:
        return config_from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None

