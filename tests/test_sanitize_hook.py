"""The sanitizer hook ($DARKNET_PARITY_SANITIZE): its flags, its cache key, and that it catches bugs.

The last tests build a throwaway cffi extension through ``load_cached`` with
the hook, as tools/sanitize.sh builds the C reference and the shim, and run
it in a child Python with the gcc runtimes preloaded: an out-of-bounds write,
a signed overflow, a float-to-int overflow and a leak must each be reported
and end the child with an error, and a clean call must not. A UBSan report
must reach its log file even while fd 2 points at /dev/null (as in the
libdarknet shim's quiet calls).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from parity.backends import native, ref_build as _build_ref
from parity.errors import BuildError

REPO = Path(__file__).resolve().parent.parent
# What tools/sanitize.sh sets.
SANITIZERS = "address,undefined,float-cast-overflow"


def test_no_flags_when_unset(monkeypatch):
    monkeypatch.delenv(native.SANITIZE_ENV, raising=False)
    assert native.sanitize_flags() == []
    assert native._sanitized_key("abc") == "abc"


def test_flags_go_to_compile_and_link(monkeypatch):
    monkeypatch.setenv(native.SANITIZE_ENV, " address, undefined ")
    flags = native.sanitize_flags()
    assert flags[0] == "-fsanitize=address,undefined"
    assert {"-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-g", "-fno-wrapv"} <= set(flags)
    _, _, _, kwds = _build_ref.make_builder("_m")._assigned_source
    assert kwds["extra_compile_args"] == _build_ref.CFLAGS + flags
    assert kwds["extra_link_args"] == flags


def test_shim_builder_gets_the_flags(monkeypatch, tmp_path):
    from parity.backends.darknet_library import DarknetLibrary, make_shim_builder
    from parity.backends.libdarknet import CDEF, SHIM_HEADERS, SHIM_SOURCES

    monkeypatch.setenv(native.SANITIZE_ENV, "address")
    header = tmp_path / "darknet.h"
    header.write_text("")
    library = DarknetLibrary(tmp_path / "libdarknet.so", tmp_path, header, "pjreddie")
    _, _, _, kwds = make_shim_builder(library, cdef=CDEF, sources=SHIM_SOURCES, headers=SHIM_HEADERS)("_m")._assigned_source
    assert "-fsanitize=address" in kwds["extra_compile_args"]
    assert kwds["extra_link_args"] == native.sanitize_flags()


def test_sanitized_builds_get_their_own_cache_entry(monkeypatch):
    monkeypatch.setenv(native.SANITIZE_ENV, "address,undefined")
    both = native._sanitized_key("k")
    monkeypatch.setenv(native.SANITIZE_ENV, "address")
    asan = native._sanitized_key("k")
    assert len({"k", both, asan}) == 3 and both.startswith("k-san") and asan.startswith("k-san")


@pytest.mark.parametrize("value", ["address;rm", "-fno-pie", "address,,undefined", "Address"])
def test_a_bad_value_is_refused(monkeypatch, value):
    monkeypatch.setenv(native.SANITIZE_ENV, value)
    with pytest.raises(BuildError, match="DARKNET_PARITY_SANITIZE.*not a sanitizer name"):
        native.sanitize_flags()


# ---- the hook at work: a throwaway extension with deliberate bugs


def _runtime(name: str) -> str | None:
    """Path of a gcc sanitizer runtime, or None (the compiler prints the bare name when it has none)."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[0]
    try:
        out = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = out.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


RUNTIMES = [_runtime("libasan.so"), _runtime("libubsan.so")]
needs_runtimes = pytest.mark.skipif(
    None in RUNTIMES and not os.environ.get("CI"),
    reason="the compiler has no libasan.so/libubsan.so (gcc ships them; clang is not supported here)")

CHILD = textwrap.dedent('''
    import sys
    import cffi
    from parity.backends.native import load_cached, sanitize_flags

    # volatile: the bugs must survive -O3 (a dead store or an unused malloc would be optimized away)
    SOURCE = """
        #include <stdlib.h>
        static int *volatile sink;
        int clean(int n) { volatile int *p = malloc(sizeof(int) * n); int k, s = 0;
                           for (k = 0; k < n; ++k) p[k] = k;
                           for (k = 0; k < n; ++k) s += p[k];
                           free((void *)p); return s; }
        int oob_write(int n) { volatile int *p = malloc(sizeof(int) * n); int s;
                               p[n] = 1; s = p[0]; free((void *)p); return s; }
        int add_one(int x) { return x + 1; }
        int to_int(float f) { return (int)f; }
        int leak(int n) { sink = malloc(sizeof(int) * n); sink[0] = n; sink = 0; return n; }
    """

    def make(name):
        ffi = cffi.FFI()
        ffi.cdef("int clean(int); int oob_write(int); int add_one(int); int to_int(float); int leak(int);")
        ffi.set_source(name, SOURCE, extra_compile_args=sanitize_flags(), extra_link_args=sanitize_flags())
        return ffi

    lib = load_cached("_sanitize_selfcheck", "v1", make).lib
    what = sys.argv[1]
    if what == "build":
        pass
    elif what == "clean":
        print(lib.clean(100))
    elif what == "oob_write":
        print(lib.oob_write(10))
    elif what == "signed_overflow":
        print(lib.add_one(2**31 - 1))
    elif what == "float_cast":
        print(lib.to_int(3e9))
    elif what == "leak":
        print(lib.leak(25))
    elif what == "signed_overflow_quiet":  # as inside the shim's quiet section: fd 2 on /dev/null
        import os
        sys.path.insert(0, "tools")
        import sanitize_driver
        sanitize_driver.route_ubsan_reports()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        print(lib.add_one(2**31 - 1))
    print("no report", file=sys.stderr)
''')


@pytest.fixture(scope="module")
def sanitized_child(tmp_path_factory):
    """Run CHILD's case under the sanitizers; the module is built once into a private cache."""
    if None in RUNTIMES:
        pytest.fail("the compiler has no libasan.so/libubsan.so; `make sanitize` needs gcc's sanitizer runtimes")
    cache = tmp_path_factory.mktemp("sanitize-cache")
    script = cache / "child.py"
    script.write_text(CHILD)

    def run(what: str, *, leaks: bool = False, ubsan_log: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update({
            native.SANITIZE_ENV: SANITIZERS,
            "DARKNET_PARITY_CACHE": str(cache),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "PYTHONMALLOC": "malloc",
            "LD_PRELOAD": " ".join(RUNTIMES),  # type: ignore[arg-type]
            "ASAN_OPTIONS": f"detect_leaks={int(leaks)}:halt_on_error=1:malloc_context_size=3:fast_unwind_on_malloc=0",
            "LSAN_OPTIONS": f"suppressions={_python_suppressions(cache)}",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1" + (f":log_path={ubsan_log}" if ubsan_log else ""),
        })
        return subprocess.run([sys.executable, str(script), what], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=300)

    # Build first, without leak detection: the compiler's own processes inherit the preload.
    built = run("build")
    assert built.returncode == 0, built.stderr
    return run


def _python_suppressions(folder: Path) -> Path:
    """LeakSanitizer suppressions for CPython's own heap (as tools/sanitize.sh writes them)."""
    path = folder / "lsan.supp"
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        python = str(sysconfig.get_config_var("LDLIBRARY"))
    else:
        python = Path(os.path.realpath(sys.executable)).name
    path.write_text(f"leak:{python}\nleak:_cffi_backend\n")
    return path


@needs_runtimes
def test_a_clean_call_reports_nothing(sanitized_child):
    res = sanitized_child("clean", leaks=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "4950" and "no report" in res.stderr
    assert "Sanitizer" not in res.stderr and "runtime error" not in res.stderr


@needs_runtimes
def test_an_out_of_bounds_write_is_caught(sanitized_child):
    res = sanitized_child("oob_write")
    assert res.returncode != 0 and "no report" not in res.stderr
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in res.stderr
    assert "WRITE of size 4" in res.stderr and "oob_write" in res.stderr


@needs_runtimes
def test_a_signed_overflow_is_caught(sanitized_child):
    res = sanitized_child("signed_overflow")
    assert res.returncode != 0 and "no report" not in res.stderr
    assert "runtime error: signed integer overflow: 2147483647 + 1" in res.stderr


@needs_runtimes
def test_a_float_to_int_overflow_is_caught(sanitized_child):
    res = sanitized_child("float_cast")
    assert res.returncode != 0 and "no report" not in res.stderr
    assert "runtime error:" in res.stderr and "outside the range of representable values of type 'int'" in res.stderr


@needs_runtimes
def test_a_leak_is_caught_past_the_python_suppressions(sanitized_child):
    res = sanitized_child("leak", leaks=True)
    assert res.returncode != 0, res.stderr
    assert "ERROR: LeakSanitizer: detected memory leaks" in res.stderr
    assert "100 byte(s) in 1 object(s)" in res.stderr and " leak " in res.stderr


@needs_runtimes
def test_ubsan_reports_reach_their_log_while_fd2_is_silenced(sanitized_child, tmp_path):
    """The driver routes UBSan's reports to its log_path (gcc's libubsan ignores the option)."""
    res = sanitized_child("signed_overflow_quiet", ubsan_log=tmp_path / "ubsan")
    assert res.returncode != 0
    logs = list(tmp_path.glob("ubsan.*"))
    assert len(logs) == 1, res.stderr
    assert "runtime error: signed integer overflow: 2147483647 + 1" in logs[0].read_text()
