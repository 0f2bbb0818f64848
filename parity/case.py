"""Recorded [yolo] cases, format v1 (``shared/recorded/FORMAT.md``).

One case per ``.npz``: the cfg text, the layer input and truth, and what a
reference produced for them (output, delta, stats), plus provenance (meta).
``load_case`` parses the cfg with the flavor named in ``meta`` so defaults
(``max`` 200 vs 90, normalizers) are the recording implementation's own.

A config with a ``class_map`` (darknet's ``map=``, which names a file) is
saved as two files: the case, whose cfg says ``map=maps/STEM.map``, and
that map file beside it (one class id per line, as darknet's ``read_map``
reads it); ``load_case`` reads the map relative to the case's folder, as
for the recorded cases in ``shared/recorded/alexeyab-extra*/``.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_atomic
from .cfg import with_map_option, yolo_config_from_cfg
from .config import YoloConfig
from .errors import CaseFormatError, ParityError
from .result import LayerRun, LayerStats

FORMAT_VERSION = 1
REQUIRED_KEYS = ("cfg", "input", "truth")
MAP_FOLDER = "maps"      # a case's map file: MAP_FOLDER/STEM.map beside the case


@dataclass
class Case:
    """One recorded case; ``output``/``delta`` are None when not yet filled."""

    cfg: str
    config: YoloConfig
    flavor: str
    input: np.ndarray
    truth: np.ndarray
    output: np.ndarray | None = None
    delta: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path).stem if self.path else str(self.meta.get("generator", "case"))

    def recorded_run(self) -> LayerRun | None:
        """What darknet itself produced on this case, as a layer run (None when the case holds no delta)."""
        if self.delta is None:
            return None
        stats = LayerStats.from_mapping(self.stats) if self.stats else None
        return LayerRun(self.output, self.delta, stats, backend="recorded")


def _json_field(data: Any, key: str, path: str) -> dict[str, Any]:
    if key not in data.files:
        return {}
    try:
        value = json.loads(str(data[key][()]))
    except (ValueError, TypeError) as exc:
        raise CaseFormatError(f"{path}: key '{key}' is not JSON text: {exc}") from exc
    if not isinstance(value, dict):
        raise CaseFormatError(f"{path}: key '{key}' must hold a JSON object")
    return value


def _float_array(data: Any, key: str, path: str) -> np.ndarray:
    arr = data[key]
    if arr.dtype != np.float32:
        raise CaseFormatError(f"{path}: '{key}' has dtype {arr.dtype}, format v1 stores float32")
    return np.array(arr)


def load_case(path: str | os.PathLike[str]) -> Case:
    """Read one format-v1 case; CaseFormatError names the file and the problem."""
    path = os.fspath(path)
    try:
        _check_member_sizes(path)
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED_KEYS if k not in data.files]
            if missing:
                raise CaseFormatError(f"{path}: missing key(s) {', '.join(missing)} (format v1 needs "
                                      f"{', '.join(REQUIRED_KEYS)})")
            cfg = str(data["cfg"][()])
            meta = _json_field(data, "meta", path)
            stats = _json_field(data, "stats", path)
            inp = _float_array(data, "input", path)
            truth = _float_array(data, "truth", path)
            output = _float_array(data, "output", path) if "output" in data.files else None
            delta = _float_array(data, "delta", path) if "delta" in data.files else None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, zlib.error, MemoryError) as exc:
        if isinstance(exc, ParityError):
            raise
        raise CaseFormatError(f"{path}: not a readable .npz case: {type(exc).__name__}: {exc}") from None
    flavor = str(meta.get("flavor", "alexeyab"))
    if flavor not in ("alexeyab", "pjreddie"):
        raise CaseFormatError(f"{path}: meta.flavor {flavor!r} is not 'alexeyab' or 'pjreddie'")
    config = yolo_config_from_cfg(cfg, path=f"{path}:cfg", flavor=flavor)
    for key, arr in (("output", output), ("delta", delta)):
        if arr is not None and arr.shape != inp.shape:
            raise CaseFormatError(f"{path}: '{key}' shape {arr.shape} differs from input shape {inp.shape}")
    return Case(cfg, config, flavor, inp, truth, output, delta, stats, meta, path)


def _check_member_sizes(path: str) -> None:
    """Each ``.npy`` member's header against the bytes the member really holds.

    A small file whose header claims a huge array would otherwise make numpy
    try to allocate it (a ``MemoryError``, or the machine swapping).
    """
    if not zipfile.is_zipfile(path):
        return                                  # np.load names the problem
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(member)
            claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if claimed > info.file_size:
                raise CaseFormatError(f"{path}: member {info.filename!r} claims shape {shape} "
                                      f"({claimed:,} bytes of {dtype}) but holds {info.file_size:,} bytes")


def map_file_name(path: str | os.PathLike[str]) -> str:
    """The ``map=`` value of the case saved at ``path``: its map file, relative to the case's folder."""
    return f"{MAP_FOLDER}/{Path(path).stem}.map"


def map_text(class_map: tuple[int, ...]) -> str:
    """A map file darknet's ``read_map`` reads back as ``class_map``: one class id per line."""
    return "".join(f"{int(v)}\n" for v in class_map)


def case_bytes(case: Case, map_name: str | None = None) -> bytes:
    """The format-v1 ``.npz`` content of ``case``, built in memory.

    The layout of ``np.savez_compressed`` (one deflated ``KEY.npy`` member per
    array, no pickles) with a fixed member timestamp, so the same case always
    gives the same bytes: recordings diff cleanly and a recorder can count
    its bytes before writing. A case whose config has a ``class_map`` needs
    ``map_name``, the map file its cfg names (``case_files`` gives both).
    """
    cfg = case.cfg
    if _has_map(case):
        if map_name is None:
            raise ParityError("case_bytes: the config has a class_map (map=), which a cfg can only name as a file: "
                              "pass map_name= or use case_files / save_case, which write the map file too")
        cfg = with_map_option(cfg, map_name)
    meta = dict(case.meta)
    meta.setdefault("flavor", case.flavor)
    meta.setdefault("format", FORMAT_VERSION)
    arrays: dict[str, Any] = {
        "cfg": np.array(cfg),
        "input": np.asarray(case.input, dtype=np.float32),
        "truth": np.asarray(case.truth, dtype=np.float32),
        "stats": np.array(json.dumps(case.stats, allow_nan=True)),
        "meta": np.array(json.dumps(meta)),
    }
    if case.output is not None:
        arrays["output"] = np.asarray(case.output, dtype=np.float32)
    if case.delta is not None:
        arrays["delta"] = np.asarray(case.delta, dtype=np.float32)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


def _has_map(case: Case) -> bool:
    """The case's config carries a map= (both flavors' parse_yolo read one)."""
    return case.config.class_map is not None


def case_files(path: str | os.PathLike[str], case: Case) -> dict[Path, bytes]:
    """What ``save_case(path, case)`` writes: the case, and its map file first where it has a class_map."""
    path = Path(path)
    class_map = case.config.class_map
    if class_map is None or not _has_map(case):
        return {path: case_bytes(case)}
    name = map_file_name(path)
    return {path.parent / name: map_text(class_map).encode("ascii"), path: case_bytes(case, name)}


def check_map_file(path: Path, data: bytes, overwrite: bool) -> None:
    """Refuse to replace a different map file unless ``overwrite``: another case may read it."""
    if overwrite or not path.exists():
        return
    try:
        same = path.is_file() and path.read_bytes() == data
    except OSError as exc:
        raise ParityError(f"{path}: cannot read the map file already there: {exc.strerror or exc}") from None
    if not same:
        raise ParityError(f"{path}: a different map file is already there; remove it, save the case under "
                          "another name, or ask to overwrite (overwrite=True, --overwrite)")


def save_case(path: str | os.PathLike[str], case: Case, *, overwrite: bool = False) -> None:
    """Write ``case`` in format v1 (compressed, no pickles, reproducible bytes).

    A case with a ``class_map`` also writes ``maps/STEM.map`` beside it
    (before the case, so no case names a missing map). An existing map file
    with other content is refused unless ``overwrite``.
    """
    files = case_files(path, case)
    for target, data in files.items():
        if target.suffix == ".map":
            check_map_file(target, data, overwrite)
    for target, data in files.items():
        write_atomic(target, data)
