"""Writing a YoloConfig back as cfg text that parses to an equal YoloConfig.

A ``class_map`` cannot be written inline: darknet's ``map=`` names a file.
``dump_yolo_cfg`` leaves it out; a case file's writer (``parity.case``)
writes the map file and names it with ``with_map_option``.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from ..config import YoloConfig
from ..errors import ConfigError
from .lexer import c_atof, c_atoi, read_sections
from .options import YOLO_OPTIONS


def dump_yolo_cfg(config: YoloConfig) -> str:
    """A [net] + [yolo] cfg that parses back (same flavor) to an equal YoloConfig.

    [yolo] gets every option whose value differs from ``config.flavor``'s
    default, then ``extra`` verbatim. Floats are written as ``repr`` (or as
    an integer when integral), which atof reads back as the same double.
    ``class_map`` is not written (``map=`` names a file: see ``with_map_option``).
    """
    base = YoloConfig.for_flavor(config.flavor)
    # mask and anchors default to values that depend on num
    defaults = {"mask": tuple(range(config.num)), "anchors": (0.5,) * (2 * config.num)}
    lines = [f"# darknet-parity YoloConfig, flavor={config.flavor}", "[net]",
             f"width={config.net_w}", f"height={config.net_h}", f"batch={config.batch}",
             "", "[yolo]"]
    fields = {name: target for name, _, target in YOLO_OPTIONS[config.flavor] if target}
    for name, target in fields.items():
        value = getattr(config, target)
        if value != defaults.get(target, getattr(base, target)):
            lines.append(f"{name}={_format_value(value)}")
    kinds = {name: kind for name, kind, _ in YOLO_OPTIONS[config.flavor]}
    for key, value in config.extra.items():
        _check_extra(key, value, fields, kinds.get(key))
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def _format_value(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(_format_value(v) for v in value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        # integral values print as ints (anchors read better); atof gives the same double
        return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)
    return str(int(value)) if isinstance(value, np.integer) else str(value)


def _check_extra(key: str, value: str, fields: Mapping[str, str], kind: str | None) -> None:
    """Refuse an ``extra`` entry that would not read back as itself."""
    if key in fields or key == "map":
        raise ConfigError(f"extra option '{key}' would override a YoloConfig field",
                          option=key)
    if not key or key[0] in "#;[" or not key.isprintable() or any(c in key for c in " \t=#"):
        raise ConfigError(f"extra option name {key!r} cannot be written to a cfg", option=key)
    if not value or not value.isprintable() or any(c in value for c in " \t"):
        raise ConfigError(f"extra value {value!r} cannot be written to a cfg", option=key)
    scan = {"int": c_atoi, "float": c_atof}.get(kind or "")
    if scan is not None and scan(value) is None:
        raise ConfigError(f"extra value {value!r} is not a number", option=key)


def with_map_option(cfg: str, map_name: str) -> str:
    """``cfg`` (holding one [yolo] section) with its ``map=`` set to ``map_name``.

    The line darknet reads (the first ``map=`` of the section) is replaced, or
    one is added after the section's last option; every other line is kept
    byte for byte.
    """
    if not map_name or not map_name.isprintable() or any(c in map_name for c in " \t#;="):
        raise ConfigError(f"map file name {map_name!r} cannot be written to a cfg", option="map")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the cfg was read (and warned about) before
        sections = [s for s in read_sections(cfg) if s.type == "yolo"]
    if len(sections) != 1:
        raise ConfigError(f"expected exactly one [yolo] section to name a map file in, found {len(sections)}",
                          option="map")
    section = sections[0]
    lines = cfg.split("\n")
    opt = section.find("map")
    if opt is not None and opt.value == map_name:
        return cfg
    if opt is not None:
        lines[opt.line - 1] = f"map={map_name}"
    else:
        last = max([section.line] + [o.line for o in section.options])
        lines.insert(last, f"map={map_name}")
    return "\n".join(lines)
