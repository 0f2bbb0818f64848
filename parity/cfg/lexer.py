"""Darknet's cfg lexer: ``read_cfg``'s line rules, C number parsing, and the warnings.

Reading follows darknet's ``read_cfg``/``read_option``/``option_find``: lines
are split on LF only, every space, tab, CR and LF is removed from a line, blank
lines and lines starting with ``#`` or ``;`` are skipped, ``[`` opens a
section, anything else is ``key=value`` split at the first ``=``, and the
*first* of repeated keys is the one darknet reads. Numbers follow C's
``atoi``/``atof`` (a leading numeric prefix: ``80#coco`` reads as 80).

Departures from darknet (each raises ``ConfigError`` naming file, line and
option): a numeric option with no leading number at all (``classes=abc``;
darknet reads 0), an integer outside int32, or NaN; a line with no ``=``
(darknet stores the key with no value, which then hides any later line
setting the same key) or with nothing after ``=`` (darknet prints "Config
file error" and drops the line), or no key.

Repeated options only warn (``ConfigWarning``, via ``warn_at``), as darknet
only prints "Unused field".
"""
from __future__ import annotations

import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from types import FrameType

from ..config import ConfigWarning
from ..errors import ConfigError, DarknetInputWarning

_C_SPACE = " \t\n\v\f\r"
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(
    r"""[+-]?(?:
        0x(?P<hex>[0-9a-f]+\.?[0-9a-f]*|\.[0-9a-f]+)(?P<bexp>p[+-]?[0-9]+)?
      | (?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?
      | inf(?:inity)?
      | nan(?:\([0-9a-z_]*\))?
    )""", re.X | re.I)
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def c_atoi(text: str) -> int | None:
    """C ``atoi``: the integer prefix of ``text``; None where there is none (atoi gives 0)."""
    m = _INT_RE.match(text.lstrip(_C_SPACE))
    return int(m.group()) if m else None


def c_atof(text: str) -> float | None:
    """C ``atof`` (strtod): the float prefix (decimal, hex, inf, nan); None where none."""
    m = _FLOAT_RE.match(text.lstrip(_C_SPACE))
    if not m:
        return None
    token = m.group()
    if m.group("hex") is not None:
        sign = -1.0 if token.startswith("-") else 1.0
        return sign * float.fromhex(token.lstrip("+-"))
    if "(" in token:  # nan(chars)
        token = token[:token.index("(")]
    return float(token)


def split_darknet_list(value: str, *, stop_at_hash: bool) -> list[str]:
    """The pieces darknet's list readers hand to atoi/atof.

    Darknet counts ``1 + commas`` (AlexeyAB stops counting at the first
    ``#`` in mask/anchors/counters_per_class; pjreddie and the route readers
    do not) and then reads that many comma-separated pieces, so a trailing
    comma yields one more piece, read as 0.
    """
    counted = value.split("#", 1)[0] if stop_at_hash else value
    return value.split(",")[: counted.count(",") + 1]


# --------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class Option:
    """One ``key=value`` line, after darknet's whitespace stripping."""

    key: str
    value: str
    line: int


# Darknet's section headers (AlexeyAB's string_to_layer_type) -> canonical type.
SECTION_TYPES = {
    "[net]": "net", "[network]": "net",
    "[conv]": "convolutional", "[convolutional]": "convolutional",
    "[max]": "maxpool", "[maxpool]": "maxpool",
    "[avg]": "avgpool", "[avgpool]": "avgpool",
    "[local_avg]": "local_avgpool", "[local_avgpool]": "local_avgpool",
    "[conn]": "connected", "[connected]": "connected",
    "[soft]": "softmax", "[softmax]": "softmax",
    "[lrn]": "normalization", "[normalization]": "normalization",
    "[empty]": "empty", "[silence]": "empty",
    "[reorg3d]": "reorg3d", "[reorg]": "reorg",
    "[Gaussian_yolo]": "Gaussian_yolo",
}
for _name in ("shortcut", "scale_channels", "sam", "crop", "cost", "detection", "region",
              "yolo", "local", "activation", "crnn", "gru", "lstm", "conv_lstm", "history",
              "rnn", "dropout", "batchnorm", "contrastive", "route", "upsample", "implicit"):
    SECTION_TYPES[f"[{_name}]"] = _name


@dataclass(frozen=True)
class Section:
    """One ``[type]`` block: darknet's header text, its canonical type, its options.

    ``type`` is the canonical layer type (``[conv]`` -> ``convolutional``) or,
    for a header darknet does not recognise, the header itself. The typed
    getters mirror ``option_find_*``: the first occurrence of a key wins.
    """

    header: str
    line: int
    options: tuple[Option, ...]
    path: str | None = field(default=None, compare=False, repr=False)

    @property
    def type(self) -> str:
        return SECTION_TYPES.get(self.header, self.header)

    @property
    def recognized(self) -> bool:
        return self.header in SECTION_TYPES

    def find(self, key: str) -> Option | None:
        """The option darknet's ``option_find`` returns: the first with this key."""
        return next((o for o in self.options if o.key == key), None)

    def line_of(self, key: str) -> int:
        """Line of option ``key``, or of the section header where it is absent."""
        opt = self.find(key)
        return opt.line if opt else self.line

    def error(self, key: str | None, message: str) -> ConfigError:
        """A ConfigError at option ``key`` (or at the header) of this section."""
        line = self.line_of(key) if key else self.line
        return ConfigError(message, path=self.path, line=line, option=key)

    def get_str(self, key: str, default: str | None = None) -> str | None:
        opt = self.find(key)
        return opt.value if opt else default

    def get_int(self, key: str, default: int) -> int:
        opt = self.find(key)
        return default if opt is None else self.parse_int(opt)

    def get_float(self, key: str, default: float) -> float:
        opt = self.find(key)
        return default if opt is None else self.parse_float(opt)

    def parse_int(self, opt: Option, text: str | None = None) -> int:
        """atoi of ``text`` (default the option's value); no number at all is an error."""
        text = opt.value if text is None else text
        value = c_atoi(text)
        if value is None:
            raise self.error(opt.key, f"expected an integer, got {text!r} (darknet's atoi reads 0)")
        if not INT32_MIN <= value <= INT32_MAX:
            raise self.error(opt.key, f"{value} does not fit darknet's 32-bit int")
        return value

    def parse_float(self, opt: Option, text: str | None = None) -> float:
        """atof of ``text`` (default the option's value); no number or NaN is an error."""
        text = opt.value if text is None else text
        value = c_atof(text)
        if value is None:
            raise self.error(opt.key, f"expected a number, got {text!r} (darknet's atof reads 0)")
        if math.isnan(value):
            raise self.error(opt.key, f"{text!r} is NaN")
        return value


def _dir_of(filename: str) -> str:
    return os.path.dirname(os.path.abspath(filename))


# Frames in these folders are the parser's own: a warning names the first caller outside them.
_PARSER_DIRS = frozenset({_dir_of(__file__), os.path.dirname(_dir_of(__file__))})


def warn_at(path: str | None, line: int, message: str, category: type[Warning] = ConfigWarning) -> None:
    """Warn (``ConfigWarning`` unless told) at ``path:line``, attributed to the first caller outside ``parity``."""
    where = f"{path}:line {line}" if path is not None else f"line {line}"
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and _dir_of(frame.f_code.co_filename) in _PARSER_DIRS:
        frame, level = frame.f_back, level + 1
    warnings.warn(f"{where}: {message}", category, stacklevel=level)


def darknet_reads_at(path: str | None, line: int, message: str) -> None:
    """A value darknet accepts but reads otherwise than it looks (``DarknetInputWarning``): we mirror darknet."""
    warn_at(path, line, message, DarknetInputWarning)


def read_sections(text: str, path: str | None = None) -> list[Section]:
    """Split cfg text into sections the way darknet's ``read_cfg`` does (see module doc)."""
    if text.startswith("\ufeff"):
        raise ConfigError("file starts with a UTF-8 byte-order mark; darknet would read it "
                          "as part of the first line and crash", path=path, line=1)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # fgets sees no line after the final newline
    sections: list[tuple[str, int, list[Option]]] = []
    for number, raw in enumerate(lines, start=1):
        if "\0" in raw:
            raise ConfigError("NUL byte in line", path=path, line=number)
        stripped = "".join(ch for ch in raw if ch not in " \t\r\n")
        if not stripped or stripped[0] in "#;":
            continue
        if stripped[0] == "[":
            sections.append((stripped, number, []))
            continue
        if not sections:
            raise ConfigError(f"option line {stripped!r} before any [section] (darknet "
                              "would crash)", path=path, line=number)
        sections[-1][2].append(_read_option(stripped, number, path))
    result = [Section(h, n, tuple(opts), path) for h, n, opts in sections]
    for section in result:
        _warn_duplicates(section)
    return result


def _read_option(stripped: str, number: int, path: str | None) -> Option:
    key, sep, value = stripped.partition("=")
    if not sep:
        raise ConfigError(f"malformed line {stripped!r}: no '=' (darknet keeps the key with no "
                          "value, which also hides any later line setting it)",
                          path=path, line=number, option=key)
    if not value:
        raise ConfigError(f"malformed line {stripped!r}: nothing after '=' (darknet prints "
                          f"'Config file error line {number}' and drops it)",
                          path=path, line=number, option=key)
    if not key:
        raise ConfigError(f"malformed line {stripped!r}: no option name before '='",
                          path=path, line=number)
    return Option(key, value, number)


def _warn_duplicates(section: Section) -> None:
    seen: dict[str, int] = {}
    for opt in section.options:
        if opt.key in seen:
            warn_at(section.path, opt.line,
                  f"option '{opt.key}' repeated in {section.header}; darknet reads only the "
                  f"first (line {seen[opt.key]}) and reports this one as an unused field")
        else:
            seen[opt.key] = opt.line

