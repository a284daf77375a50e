"""Typed configs: a default YAML per recipe, validated into dataclasses, with dotted overrides.

The generic loader: it knows no recipe and nothing of the engine (whose `train:` section is
`genflow.engine.TrainConfig`).

A recipe's config is a (nested) dataclass. `load_config(Cls, yaml_path, ["train.lr=3e-4", ...])`
reads the YAML, applies the overrides and checks every key and type; an unknown key is a
`ConfigError` that names the closest valid keys. A config class may declare
`aliases: ClassVar[dict[str, str]]` mapping a source system's key names (e.g. `base_lr`) to ours
(e.g. `train.lr`), so users' old command lines keep working.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from genflow.errors import ConfigError

__all__ = [
    "Decay",
    "Range",
    "PositiveInt",
    "NonNegativeInt",
    "Positive",
    "NonNegative",
    "Probability",
    "check_ranges",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "parse_override",
]


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric config key, declared beside it: `lr: Annotated[float, Range(gt=0)]`.

    Loading a config checks it (a value out of range is one `ConfigError` naming the key and the
    range, before anything is built), `genflow config RECIPE --keys` prints it after the type, and a
    float must also be finite. A tuple or list key is checked item by item.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __str__(self) -> str:
        if (self.ge is not None or self.gt is not None) and (self.le is not None or self.lt is not None):
            low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}"
            high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})"
            return f"in {low}, {high}"
        parts = [f"{op} {bound:g}" for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if bound is not None]
        return " and ".join(parts)

    def check(self, value: Any, key: str) -> None:
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if item is None or isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            ok = math.isfinite(item) and all((
                self.ge is None or item >= self.ge, self.gt is None or item > self.gt,
                self.le is None or item <= self.le, self.lt is None or item < self.lt))
            if not ok:
                what = "a finite value" if isinstance(item, float) and not math.isfinite(item) else "a value"
                got = value if len(items) == 1 and not isinstance(value, (list, tuple)) else f"{list(value)}"
                raise _OutOfRange(f"config key '{key}': expected {what} {self}{' (each)' if got is not value else ''}, got {got}")


class _OutOfRange(ConfigError):
    """A value of the right type outside its key's Range (reported as such, not as a type mismatch)."""


PositiveInt = Annotated[int, Range(ge=1)]  # a count, size or width: at least 1
NonNegativeInt = Annotated[int, Range(ge=0)]
Positive = Annotated[float, Range(gt=0)]  # finite and > 0 (a learning rate, a scale)
NonNegative = Annotated[float, Range(ge=0)]  # finite and >= 0 (a weight, a noise level)
Probability = Annotated[float, Range(ge=0, le=1)]
Decay = Annotated[float, Range(ge=0, lt=1)]  # a moving-average rate (Adam's betas, EMA)


def check_ranges(obj: Any, prefix: str = "") -> None:
    """ConfigError for the first field of dataclass `obj` outside its declared `Range` (sections too).

    `load_config` checks ranges while it reads values; a config's `__post_init__` calls this so that
    one built in Python (`TrainConfig(lr=-1)`) is checked the same way.
    """
    hints = get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for bound in _ranges(hints[f.name]):
            bound.check(value, prefix + f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, prefix + f.name + ".")


def _ranges(tp: Any) -> list[Range]:
    """The `Range`s declared on a type hint, looking inside `X | None`."""
    if get_origin(tp) is Annotated:
        return [m for m in tp.__metadata__ if isinstance(m, Range)]
    if get_origin(tp) in (Union, types.UnionType):
        return [r for a in get_args(tp) for r in _ranges(a)]
    return []


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        bounds = _ranges(tp)
        return _type_name(get_args(tp)[0]) + "".join(f" ({b})" for b in bounds)
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
    if origin is Annotated:
        value = _coerce(value, get_args(tp)[0], key)
        for bound in _ranges(tp):
            bound.check(value, key)
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        out_of_range = None
        for option in get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, key)
            except _OutOfRange as exc:  # the right type, the wrong value: say that, not "expected int | null"
                out_of_range = out_of_range or exc
            except ConfigError:
                pass
        raise out_of_range or bad
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
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key_error(str(key), list(fields), prefix)
        if isinstance(value, dict) and _is_dataclass_type(hints[key]):
            # a section's keys change the field's own default (e.g. a recipe's train defaults), not the class's
            value = _deep_merge(config_to_dict(_field_default(fields[key])), value)
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': {exc}") from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _deep_merge(base: Any, over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base` (a dict or None), section by section."""
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in over.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


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



def field_help(cls: type) -> dict[str, str]:
    """Each field's help line: the comment lines just above it, then the `# comment` ending its line.

    The comments in the dataclass source are the documentation (one source: `genflow config RECIPE
    --keys` and `--help` print them). A field declared in a base class takes its help from there;
    fields without a comment get "".
    """
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            helps.update({k: v for k, v in _comments_of_fields(klass).items() if v or k not in helps})
    return {f.name: helps.get(f.name, "") for f in dataclasses.fields(cls)}


def _comments_of_fields(cls: type) -> dict[str, str]:
    """{field declared in `cls`'s own body: its comment}, read from the class's source."""
    import inspect
    import io
    import tokenize

    names = set(cls.__dict__.get("__annotations__", {}))
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline))
    except (OSError, TypeError, tokenize.TokenError, SyntaxError):  # no source: a frozen app, a class made at run time
        return {}
    helps: dict[str, str] = {}
    above: list[str] = []  # comment lines since the last field
    line_field: dict[int, str] = {}
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names and i + 1 < len(tokens) \
                and tokens[i + 1].string == ":" and tok.start[0] not in line_field:
            line_field[tok.start[0]] = tok.string
            helps.setdefault(tok.string, " ".join(above))
            above = []
        elif tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            owner = line_field.get(tok.start[0])
            if owner is not None:  # a trailing comment follows the lines above
                helps[owner] = f"{helps[owner]} {text}".strip()
            elif tok.start[1] == 4:
                above.append(text)
        elif tok.type == tokenize.NL and tokens[i - 1].type == tokenize.NL:
            above = []  # a blank line ends a comment block
    return helps


def config_keys(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """Every leaf key of a config dataclass as (dotted key, type, default, help), in field order."""
    hints = get_type_hints(cls, include_extras=True)
    helps = field_help(cls)
    defaults = cls()
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            rows += config_keys(tp, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, _type_name(tp), config_to_dict(getattr(defaults, f.name)), helps[f.name]))
    return rows


def _takes_text(tp: Any) -> bool:
    """str, a Literal of strings, or either or None: the option's text is its value (`actions=true`)."""
    if get_origin(tp) in (Union, types.UnionType):
        return any(_takes_text(a) for a in get_args(tp) if a is not type(None))
    if get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in get_args(tp))
    return tp is str


def load_options(cls: type, values: list[str], what: str) -> Any:
    """Command options (`steps=10 solver=rk4`) into the options dataclass `cls`, checked like config keys.

    `what` names them in errors ("sample option", "eval chamfer option"). A string-typed option keeps
    the text as typed (`digits=4,7`, `out=001`, `actions=true`), not its YAML reading.
    """
    hints = get_type_hints(cls)
    data: dict[str, Any] = {}
    for text in values:
        key, value = parse_override(text)
        if key in hints and _takes_text(hints[key]) and value is not None and not isinstance(value, str):
            value = text.partition("=")[2].strip()
        data[key] = value
    try:
        return config_from_dict(cls, data)
    except ConfigError as exc:
        message = str(exc).replace("config key", what).replace("config section '<root>'", what)
        raise ConfigError(message.replace("valid keys:", "valid options:")) from None
