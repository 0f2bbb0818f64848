"""Darknet cfg files, read as darknet reads them: the public API.

* ``lexer``: ``read_cfg``'s line rules (``read_sections``, ``Section``,
  ``Option``), C's ``atoi``/``atof``, darknet's list splitting, warnings;
* ``options``: the [net] and [yolo] option tables (``parse_net``,
  ``parse_yolo``), per flavor;
* ``walk``: each layer's output size, for the grid a [yolo] sees
  (``LayerWalk``, ``Shape``, ``Unsized``);
* ``network``: a whole cfg (``parse_cfg``, ``load_cfg``, ``NetworkCfg``,
  ``YoloLayer``, ``yolo_config_from_cfg``);
* ``dump``: a ``YoloConfig`` back to cfg text (``dump_yolo_cfg``).

``YoloConfig`` itself, its constants and ``ConfigWarning`` live in
``parity.config`` (re-exported here for convenience).
"""
from __future__ import annotations

from ..config import ConfigWarning, YoloConfig
from .dump import dump_yolo_cfg, with_map_option
from .lexer import Option, Section, c_atof, c_atoi, read_sections, split_darknet_list
from .network import NetworkCfg, YoloLayer, load_cfg, parse_cfg, yolo_config_from_cfg
from .options import YOLO_OPTIONS, NetOptions, parse_net, parse_yolo
from .walk import LayerWalk, Shape, Unsized

__all__ = [
    "ConfigWarning", "LayerWalk", "NetOptions", "NetworkCfg", "Option", "Section", "Shape", "Unsized",
    "YOLO_OPTIONS", "YoloConfig", "YoloLayer", "c_atof", "c_atoi", "dump_yolo_cfg", "load_cfg", "parse_cfg",
    "parse_net", "parse_yolo", "read_sections", "split_darknet_list", "with_map_option", "yolo_config_from_cfg",
]
