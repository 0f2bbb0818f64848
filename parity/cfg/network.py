"""A whole cfg: parse_cfg/load_cfg walk the sections, parse and size every [yolo] layer.

Like darknet, a [yolo] whose input channels are not ``n*(5+classes)`` is an
error; so is one whose grid depends on a layer that cannot be sized (see
``parity.cfg.walk``). Section types darknet does not recognise only warn
(``ConfigWarning``), as darknet only prints "Type not recognized".
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import YoloConfig
from ..errors import ConfigError
from .lexer import Section, read_sections, warn_at
from .options import NetOptions, check_flavor, parse_net, parse_yolo
from .walk import LayerWalk

@dataclass(frozen=True)
class YoloLayer:
    """A [yolo] layer of a network: darknet layer index ([net] excluded), line, grid.

    ``grid_w``/``grid_h`` are None only where no layer precedes the [yolo]
    (the recorded-case cfgs: [net] + one [yolo]).
    """

    index: int
    line: int
    config: YoloConfig
    grid_w: int | None
    grid_h: int | None


@dataclass(frozen=True)
class NetworkCfg:
    """A parsed cfg: [net] sizes, every section ([net] first), the [yolo] layers.

    ``batch`` is the batch darknet's layers see (batch / subdivisions).
    """

    width: int
    height: int
    channels: int
    batch: int
    sections: list[Section]
    yolo_layers: list[YoloLayer]
    subdivisions: int = 1
    flavor: str = "alexeyab"
    path: str | None = None


def parse_cfg(text: str, *, path: str | None = None, flavor: str = "alexeyab") -> NetworkCfg:
    """Parse cfg text as darknet of ``flavor`` would, validating every [yolo] layer."""
    check_flavor(flavor)
    path = None if path is None else os.fspath(path)
    sections = read_sections(text, path)
    if flavor == "pjreddie" and "\r" in text:
        warn_at(path, text.count("\n", 0, text.index("\r")) + 1,
              "carriage return: pjreddie darknet strips only spaces, tabs and LF, so it would "
              "not recognise '[net]\\r' and similar headers (AlexeyAB strips CR)")
    if not sections:
        raise ConfigError("no sections: a cfg starts with [net]", path=path)
    head = sections[0]
    if head.type != "net":
        raise ConfigError(f"first section is {head.header}; darknet requires [net] or "
                          "[network] first", path=path, line=head.line)
    net = parse_net(head, flavor)
    yolos = _yolo_layers(sections, net, flavor)
    return NetworkCfg(net.width, net.height, net.channels, net.batch, sections, yolos,
                      net.subdivisions, flavor, path)


def _yolo_layers(sections: list[Section], net: NetOptions, flavor: str) -> list[YoloLayer]:
    """Walk the layers after [net]; parse and size every [yolo] on the way."""
    walk = LayerWalk(net.width, net.height, net.channels, sections[0])
    yolos: list[YoloLayer] = []
    for index, section in enumerate(sections[1:]):
        if section.type == "yolo":
            config = parse_yolo(section, net, flavor)
            grid = walk.yolo_grid(section, config.n, config.classes) if index else None
            yolos.append(YoloLayer(index, section.line, config, *(grid or (None, None))))
        elif not section.recognized or section.type == "net":
            warn_at(section.path, section.line, f"darknet does not recognise section "
                  f"{section.header} here ('Type not recognized'); it becomes an empty layer")
        walk.push(section)
    return yolos


def load_cfg(path: str | os.PathLike, *, flavor: str = "alexeyab") -> NetworkCfg:
    """Read and parse a cfg file (bytes decoded as UTF-8, undecodable bytes kept)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise ConfigError(f"cannot read cfg: {err.strerror}", path=str(name)) from None
    return parse_cfg(data.decode("utf-8", "surrogateescape"), path=str(name), flavor=flavor)


def yolo_config_from_cfg(text: str, *, path: str | os.PathLike | None = None,
                         flavor: str = "alexeyab") -> YoloConfig:
    """The YoloConfig of a cfg holding exactly one [yolo] section."""
    name = None if path is None else os.fspath(path)
    cfg = parse_cfg(text, path=name, flavor=flavor)
    if len(cfg.yolo_layers) != 1:
        line = cfg.yolo_layers[1].line if len(cfg.yolo_layers) > 1 else None
        raise ConfigError(f"expected exactly one [yolo] section, found {len(cfg.yolo_layers)}",
                          path=name, line=line)
    return cfg.yolo_layers[0].config

