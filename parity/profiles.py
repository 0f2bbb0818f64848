"""Named case profiles: sets of [yolo] heads modelled on real darknet cfgs.

A port that agrees with darknet on random configs can still fail on the
options real networks use together (YOLOv4's CIoU with ``iou_thresh`` and
``max_delta``, Scaled-YOLOv4's ``new_coords``, ...). A profile pins such a
combination: its heads (mask, grid), their [yolo] options, and how cases
for it are generated (``parity.generate.CaseFeatures``). Variants derive
from a base and change one option (``yolov4/iou_loss=giou``).

Profiles live in ``profiles.yaml`` beside this module; its header documents
the format. ``load_profiles(paths)`` merges user files over it: a new name
adds a profile, an existing name replaces it. Errors raise ``ConfigError``
naming the YAML file, the line and the profile.

Cases are deterministic: ``profile_cases(profile, count, seed)`` gives the
same bytes for the same arguments. Each of its ``count`` samples holds one
case per head, all heads seeing the same truths as in a darknet network.
The first samples each force one rare feature (an empty image, an ``x ==
0`` terminator mid-list, rows past ``max``, NaN/Inf, ...) so that even a
short run holds every feature the profile enables.
"""
from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .case import Case
from .cfg import load_cfg
from .config import FLAVORS, YoloConfig
from .errors import ConfigError, ParityError
from .generate import (CaseFeatures, HeadGrid, enabled_branches, forced_features, generate_cases)

SHIPPED_YAML = Path(__file__).with_name("profiles.yaml")

_TOP_KEYS = ("version", "defaults", "profiles")
_DEFAULT_KEYS = ("count", "batch", "truths", "features")
_PROFILE_KEYS = ("description", "cfg", "flavor", "net", "batch", "truths", "count", "features", "yolo",
                 "heads", "base", "set")
_HEAD_KEYS = ("mask", "stride", "yolo")
# YoloConfig fields a profile sets through `yolo`/`set` (mask through heads, sizes through net).
_OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(YoloConfig)
                       if f.name not in ("mask", "net_w", "net_h", "batch", "flavor", "extra"))
_ALIASES = {"max": "max_boxes"}
# Batches and truths of cfg_cases: real grids are large, so keep cases small.
CFG_BATCH = (1, 2)
CFG_TRUTHS = (0, 10)


@dataclass(frozen=True)
class HeadSpec:
    """One head of a profile: its anchors, its grid (net / stride) and its full config."""

    mask: tuple[int, ...]
    stride: tuple[int, int]
    grid_w: int
    grid_h: int
    config: YoloConfig

    def grid(self) -> HeadGrid:
        return HeadGrid(self.config, self.grid_w, self.grid_h)


@dataclass(frozen=True)
class Profile:
    """A named set of heads and the way cases are generated for them."""

    name: str
    description: str
    flavor: str
    heads: tuple[HeadSpec, ...]
    net: tuple[int, int]
    batch: tuple[int, int]
    truths: tuple[int, int]
    count: int
    features: CaseFeatures
    base: str | None = None
    cfg: str | None = None
    changes: tuple[tuple[str, Any], ...] = ()  # the `set:` options, in order
    source: str = ""                             # the YAML file defining it

    def enabled_branches(self, head: int) -> set[str]:
        """darknet branches cases of head ``head`` can reach (see ``generate.enabled_branches``)."""
        return enabled_branches(self.heads[head].config, self.features, flavor=self.flavor)


# --------------------------------------------------------------------------
# Loading


@dataclass
class _Raw:
    """One profile as written, with where it was written and its file's defaults."""

    name: str
    data: dict[str, Any]
    path: str
    line: int | None
    defaults: dict[str, Any]

    def error(self, message: str, option: str | None = None) -> ConfigError:
        return ConfigError(f"profile {self.name!r}: {message}", path=self.path, line=self.line, option=option)


def load_profiles(extra: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Profile]:
    """The shipped profiles with the user's YAML files merged over them, in order.

    A profile in a later file replaces one of the same name (keeping its
    place); profiles deriving from it (``base:``) are built on the replacement.
    Loads are cached per set of files and their modification times.
    """
    if isinstance(extra, (str, os.PathLike)):
        extra = [extra]
    return dict(_load_cached(tuple(_file_key(p) for p in (SHIPPED_YAML, *extra))))


def default_profile_names() -> list[str]:
    """Every profile and variant of the shipped YAML, in file order."""
    return list(_load_cached((_file_key(SHIPPED_YAML),)))


def _file_key(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """A file's identity for the cache: its path, modification time and size (0s if unreadable)."""
    try:
        stat = os.stat(path)
    except OSError:
        return os.fspath(path), 0, 0  # _read_file reports it
    return os.fspath(path), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=16)
def _load_cached(files: tuple[tuple[str, int, int], ...]) -> dict[str, Profile]:
    shipped_defaults: dict[str, Any] = {}
    raws: dict[str, _Raw] = {}
    for index, (path, _, _) in enumerate(files):
        defaults, profiles = _read_file(Path(path))
        if index == 0:
            shipped_defaults = defaults
        file_defaults = _merge(shipped_defaults, defaults) if index else defaults
        for raw in profiles:
            raw.defaults = file_defaults
            raws[raw.name] = raw
    merged: dict[str, dict[str, Any]] = {}
    for name in raws:
        _resolve(name, raws, merged, ())
    return {name: _build(raws[name], merged[name]) for name in raws}


def get_profile(name: str, extra: Sequence[str | os.PathLike[str]] = ()) -> Profile:
    """One profile by name; an unknown name is a ``ParityError`` listing the known ones."""
    profiles = load_profiles(extra)
    if name not in profiles:
        raise ParityError(f"unknown profile {name!r}; known: {', '.join(profiles)}")
    return profiles[name]


def _read_file(path: Path) -> tuple[dict[str, Any], list[_Raw]]:
    """A profile file's defaults and profiles, with each profile's line."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read profile file: {err}", path=where) from None
    try:
        doc = yaml.safe_load(text)
        lines = _profile_lines(text, where)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(err, 'problem', None) or err}", path=where,
                          line=mark.line + 1 if mark else None) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("a profile file holds a mapping with 'profiles:' (and optionally "
                          "'version:', 'defaults:')", path=where)
    _check_keys(doc, _TOP_KEYS, lambda m, o=None: ConfigError(m, path=where, option=o), "top level")
    if doc.get("version", 1) != 1:
        raise ConfigError(f"version {doc['version']!r} is not supported (this is version 1)", path=where,
                          option="version")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError("'defaults' must be a mapping", path=where, option="defaults")
    _check_keys(defaults, _DEFAULT_KEYS, lambda m, o=None: ConfigError(m, path=where, option=o), "defaults")
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ConfigError("'profiles' must be a mapping of name to profile", path=where, option="profiles")
    raws = []
    for name, data in profiles.items():
        raw = _Raw(str(name), data, where, lines.get(str(name)), {})
        if not isinstance(data, dict):
            raise raw.error("a profile must be a mapping of keys (description, heads, yolo, base, set, ...)")
        _check_keys(data, _PROFILE_KEYS, raw.error, "a profile")
        raws.append(raw)
    return defaults, raws


def _profile_lines(text: str, where: str) -> dict[str, int]:
    """Line of each profile name; a name repeated in one file is an error (YAML keeps the last)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return {}
    lines: dict[str, int] = {}
    for key, value in root.value:
        if key.value != "profiles" or not isinstance(value, yaml.MappingNode):
            continue
        for name, _ in value.value:
            if name.value in lines:
                raise ConfigError(f"profile {name.value!r} is defined twice in this file (first at line "
                                  f"{lines[name.value]})", path=where, line=name.start_mark.line + 1)
            lines[name.value] = name.start_mark.line + 1
    return lines


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], error: Any, what: str) -> None:
    for key in data:
        if key not in allowed:
            raise error(f"unknown key {key!r} in {what}; expected one of {', '.join(allowed)}", str(key))


def _merge(under: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``under``; option and feature mappings merge key by key."""
    out = dict(under)
    for key, value in over.items():
        if key in ("features", "yolo", "set") and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _resolve(name: str, raws: Mapping[str, _Raw], merged: dict[str, dict[str, Any]],
             chain: tuple[str, ...]) -> dict[str, Any]:
    """The profile's keys with its base's (recursively) and the defaults under them."""
    if name in merged:
        return merged[name]
    raw = raws[name]
    base = raw.data.get("base")
    if base is None:
        result = _merge(raw.defaults, raw.data)
    else:
        if not isinstance(base, str) or base not in raws:
            raise raw.error(f"base {base!r} is not a known profile", "base")
        if base in chain or base == name:
            raise raw.error(f"base chain loops: {' -> '.join((*chain, name, base))}", "base")
        own = {k: v for k, v in raw.data.items() if k != "description"}
        result = _merge(_resolve(base, raws, merged, (*chain, name)), own)
        result["description"] = raw.data.get("description") or _variant_description(base, raw.data.get("set"))
    merged[name] = result
    return result


def _variant_description(base: str, changes: Any) -> str:
    if isinstance(changes, dict) and changes:
        return f"{base} with " + ", ".join(f"{k}={v}" for k, v in changes.items())
    return f"variant of {base}"


# --------------------------------------------------------------------------
# Building


def _build(raw: _Raw, data: Mapping[str, Any]) -> Profile:
    """A validated Profile from merged keys; every problem names file, line and profile."""
    flavor = data.get("flavor", "alexeyab")
    if flavor not in FLAVORS:
        raise raw.error(f"flavor {flavor!r}; expected one of {', '.join(FLAVORS)}", "flavor")
    net = _pair(raw, data, "net", low=1)
    shared = _options(raw, data.get("yolo"), "yolo")
    changes = _options(raw, data.get("set"), "set")
    heads_data = data.get("heads")
    if not isinstance(heads_data, list) or not heads_data:
        raise raw.error("'heads' must be a non-empty list of {mask, stride, yolo}", "heads")
    heads = tuple(_head(raw, k, head, net, flavor, shared, changes) for k, head in enumerate(heads_data))
    try:
        features = CaseFeatures(**(data.get("features") or {}))
    except TypeError as err:
        names = ", ".join(f.name for f in dataclasses.fields(CaseFeatures))
        raise raw.error(f"features: {err} (known features: {names})", "features") from None
    except ParityError as err:
        raise raw.error(f"features: {err}", "features") from None
    batch = _pair(raw, data, "batch", low=1)
    truths = _pair(raw, data, "truths", low=0)
    count = data.get("count", 16)
    if not _is_int(count) or count < 0:
        raise raw.error(f"count {count!r} must be an integer >= 0", "count")
    cfg = data.get("cfg")
    return Profile(raw.name, str(data.get("description", raw.name)), flavor, heads, net, batch, truths, count,
                   features, data.get("base"), None if cfg is None else str(cfg),
                   tuple((k, _freeze(v)) for k, v in (data.get("set") or {}).items()),
                   raw.path)


def _head(raw: _Raw, index: int, head: Any, net: tuple[int, int], flavor: str, shared: dict[str, Any],
          changes: dict[str, Any]) -> HeadSpec:
    what = f"heads[{index}]"
    if not isinstance(head, dict):
        raise raw.error(f"{what} must be a mapping {{mask, stride, yolo}}", "heads")
    _check_keys(head, _HEAD_KEYS, raw.error, what)
    mask = head.get("mask")
    if not isinstance(mask, list) or not mask or not all(_is_int(m) for m in mask):
        raise raw.error(f"{what}: mask must be a non-empty list of anchor indices", "mask")
    stride = _pair(raw, head, "stride", low=1, what=what)
    for size, step, axis in zip(net, stride, ("width", "height")):
        if size % step:
            raise raw.error(f"{what}: net {axis} {size} is not a multiple of stride {step}", "stride")
    options = {**shared, **_options(raw, head.get("yolo"), f"{what}.yolo"), **changes}
    try:
        config = YoloConfig(**options, mask=tuple(mask), net_w=net[0], net_h=net[1], flavor=flavor)
    except ConfigError as err:
        raise raw.error(f"{what}: [yolo] option refused: {getattr(err, 'bare', err)}", err.option) from None
    return HeadSpec(config.mask, stride, net[0] // stride[0], net[1] // stride[1], config)


def _options(raw: _Raw, options: Any, what: str) -> dict[str, Any]:
    """[yolo] options as YoloConfig keyword arguments, typed like the fields."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise raw.error(f"'{what}' must be a mapping of [yolo] options", what)
    out = {}
    for key, value in options.items():
        field = _ALIASES.get(str(key), str(key))
        if field not in _OPTION_FIELDS:
            raise raw.error(f"unknown [yolo] option {key!r} in '{what}'; known: "
                            f"{', '.join(sorted(_OPTION_FIELDS))} (or max)", str(key))
        out[field] = _typed(raw, str(key), field, value)
    return out


_INT_FIELDS = {"classes", "num", "max_boxes", "new_coords", "objectness_smooth", "focal_loss", "show_details"}
_STR_FIELDS = {"iou_thresh_kind", "iou_loss"}


def _typed(raw: _Raw, key: str, field: str, value: Any) -> Any:
    """One option value checked against its field's type (YoloConfig then checks its range)."""
    if field in _INT_FIELDS:
        ok = _is_int(value)
    elif field in _STR_FIELDS:
        ok = isinstance(value, str)
    elif field == "anchors":
        ok = isinstance(value, list) and all(_is_number(v) for v in value)
        value = tuple(float(v) for v in value) if ok else value
    elif field in ("counters_per_class", "class_map"):     # class_map: map= given inline (a list of class ids)
        ok = value is None or (isinstance(value, list) and all(_is_int(v) for v in value))
        value = tuple(value) if ok and value is not None else value
    else:
        ok = _is_number(value)
        value = float(value) if ok else value
    if not ok:
        raise raw.error(f"[yolo] option {key}: {value!r} has the wrong type", key)
    return value


def _pair(raw: _Raw, data: Mapping[str, Any], key: str, *, low: int, what: str = "") -> tuple[int, int]:
    """N or [a, b] as a pair of ints >= low."""
    value = data.get(key)
    pair = [value, value] if _is_int(value) else value
    if not (isinstance(pair, list) and len(pair) == 2 and all(_is_int(v) and v >= low for v in pair)):
        raise raw.error(f"{what + ': ' if what else ''}{key} {value!r} must be an integer >= {low} or a "
                        f"pair [a, b] of them", key)
    if key in ("batch", "truths") and pair[0] > pair[1]:
        raise raw.error(f"{key} {value!r}: the low end exceeds the high end", key)
    return int(pair[0]), int(pair[1])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------
# Cases


def profile_cases(profile: Profile, count: int, seed: int) -> Iterator[Case]:
    """``count`` samples of ``profile`` (one case per head each), deterministic in ``seed``.

    ``meta`` holds ``profile``, ``sample``, ``head``, ``profile_seed`` (``seed``),
    ``seed`` (the sample's own seed), ``features``, ``forced`` (the rare feature
    the sample forces, or None) and ``case_id``; ``path`` is None.
    """
    heads = [h.grid() for h in profile.heads]
    yield from _sample_cases(profile.name, heads, profile.flavor, profile.features, profile.batch,
                             profile.truths, count, seed, {"profile": profile.name})


def cfg_cases(path: str | os.PathLike[str], count: int, seed: int, flavor: str = "alexeyab") -> Iterator[Case]:
    """``count`` samples for a real darknet cfg: one case per [yolo] layer, at its true grid.

    Grids come from walking the cfg's layers (``load_cfg``); batches stay at
    1-2 images so that full-size grids remain quick.
    """
    net = load_cfg(path, flavor=flavor)
    if not net.yolo_layers:
        raise ConfigError("no [yolo] section", path=os.fspath(path))
    for layer in net.yolo_layers:
        if layer.grid_w is None or layer.grid_h is None:
            raise ConfigError("the [yolo] grid cannot be derived: no layer precedes it", path=os.fspath(path),
                              line=layer.line)
    heads = [HeadGrid(layer.config, layer.grid_w, layer.grid_h) for layer in net.yolo_layers]  # type: ignore[arg-type]
    name = Path(path).name
    yield from _sample_cases(name, heads, flavor, CaseFeatures(), CFG_BATCH, CFG_TRUTHS, count, seed,
                             {"profile": f"cfg:{name}", "cfg_path": os.fspath(path)})


def _sample_cases(name: str, heads: Sequence[HeadGrid], flavor: str, features: CaseFeatures,
                  batch: tuple[int, int], truths: tuple[int, int], count: int, seed: int,
                  meta: Mapping[str, Any]) -> Iterator[Case]:
    """Samples 0..count-1; sample k < len(forced) forces the k-th rare feature."""
    forced = forced_features(features, [h.config for h in heads], flavor)
    salt = zlib.crc32(name.encode("utf-8"))
    for k in range(count):
        size = int(np.random.default_rng([seed, salt, k, 0]).integers(batch[0], batch[1] + 1))
        force = forced[k] if k < len(forced) else None
        sample_features, sample_truths = features, truths
        if force:  # a forced feature other than an empty image needs boxes (enough for every head)
            sample_features = features.forcing(force)
            if force != "empty_image":
                sample_truths = (max(truths[0], truths[1] // 2, 1), max(truths[1], 1))
        cases = generate_cases([seed, salt, k, 1], heads, batch=size, truths=sample_truths, features=sample_features,
                               flavor=flavor, label=f"parity.profiles {name}#{k} seed={seed}")
        for case in cases:
            case.meta.update(meta)
            case.meta.update({"sample": k, "heads": len(heads), "profile_seed": seed, "forced": force,
                              "case_id": f"{name}#{k}/head{case.meta['head']}"})
            yield case


def suite_cases(names: Sequence[str] | None = None, *, seed: int = 0,
                extra: Sequence[str | os.PathLike[str]] = ()) -> Iterator[Case]:
    """Every case of the named profiles (default: the shipped ones) at their own counts."""
    profiles = load_profiles(extra)
    for name in default_profile_names() if names is None else names:
        if name not in profiles:
            raise ParityError(f"unknown profile {name!r}; known: {', '.join(profiles)}")
        yield from profile_cases(profiles[name], profiles[name].count, seed)


def case_id(case: Case) -> str:
    """A stable id: ``profile#sample/headN`` for generated cases, else the file stem or generator."""
    meta = case.meta
    if "case_id" in meta:
        return str(meta["case_id"])
    if "profile" in meta and "sample" in meta and "head" in meta:
        return f"{meta['profile']}#{meta['sample']}/head{meta['head']}"
    return case.name
