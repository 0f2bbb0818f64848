"""Building the C reference: first use compiles into a cache; no compiler is a clear error."""
from __future__ import annotations

import pytest

from parity.backends import native, ref_build as _build_ref
from parity.backends.c_reference import load_reference
from parity.errors import BuildError


def test_missing_compiler_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-cc-4711")
    monkeypatch.setenv("DARKNET_PARITY_CACHE", str(tmp_path))
    with pytest.raises(BuildError, match="no C compiler: 'no-such-cc-4711'.*apt-get install gcc"):
        native.load_cached("_darknet_ref", "testkey", _build_ref.make_builder)


def test_first_use_compiles_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DARKNET_PARITY_CACHE", str(tmp_path))
    mod = native.load_cached("_darknet_ref", "k1", _build_ref.make_builder)
    built = list(tmp_path.glob("_darknet_ref-k1*"))
    assert len(built) == 1 and mod.lib.yref_branch_name(0) != mod.ffi.NULL
    assert mod.ffi.string(mod.lib.yref_branch_name(0)) == b"ignore"


def test_cache_key_follows_the_sources(tmp_path):
    src = tmp_path / "darknet_ref"
    src.mkdir()
    for name in _build_ref.SOURCES + _build_ref.HEADERS:
        (src / name).write_bytes((_build_ref.REF_DIR / name).read_bytes())
    before = _build_ref.source_hash(src)
    (src / "ref_cost.c").write_text((src / "ref_cost.c").read_text() + "\n/* edited */\n")
    assert _build_ref.source_hash(src) != before


def test_branch_names_match_the_header():
    mod = load_reference()
    names = [mod.ffi.string(mod.lib.yref_branch_name(k)).decode() for k in range(_build_ref.branch_count())]
    assert len(set(names)) == len(names) and all(names)
    assert mod.ffi.string(mod.lib.yref_branch_name(_build_ref.branch_count())) == b""
