"""Compiling and loading cffi extensions on first use, into a cache.

Every native part (the C reference, the libdarknet shim, the training glue) goes through
``load_cached``: the module is compiled once per content hash into
``$DARKNET_PARITY_CACHE`` (default ``~/.cache/darknet-parity``) and loaded
from there, so concurrent workers and edited sources are both safe.

``$DARKNET_PARITY_SANITIZE`` (e.g. ``address,undefined``) builds them with
gcc/clang sanitizers (``sanitize_flags``; ``tools/sanitize.sh`` runs them).
Such a build gets its own cache entry, so it never mixes with a normal one.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

import cffi

from ..errors import BuildError


def cache_dir() -> Path:
    """Where compiled extensions live (created on demand)."""
    root = os.environ.get("DARKNET_PARITY_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "darknet-parity"


def c_compiler() -> str:
    """The compiler Python's build tools will call; BuildError if it is absent."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    exe = shlex.split(cc)[0]
    if shutil.which(exe) is None:
        raise BuildError(
            f"no C compiler: '{exe}' (from {'$CC' if os.environ.get('CC') else 'Python build config'}) "
            "is not on PATH. Install one (Debian/Ubuntu: apt-get install gcc) or set CC."
        )
    return exe


SANITIZE_ENV = "DARKNET_PARITY_SANITIZE"


def sanitize_flags() -> list[str]:
    """Compile and link flags for the sanitizers in ``$DARKNET_PARITY_SANITIZE``; [] when unset.

    The value is the comma-separated list ``-fsanitize=`` takes
    (``address,undefined``). A process that loads such a build needs the
    sanitizer runtime preloaded (``LD_PRELOAD``), as ``tools/sanitize.sh`` does.
    ``-fno-wrapv`` undoes the ``-fwrapv`` of Python's own CFLAGS, under which
    signed overflow (undefined in darknet's build) would go unchecked.
    """
    value = os.environ.get(SANITIZE_ENV, "").strip()
    if not value:
        return []
    kinds = [k.strip() for k in value.split(",")]
    bad = [k for k in kinds if not re.fullmatch(r"[a-z][a-z0-9-]*", k)]
    if bad:
        raise BuildError(f"${SANITIZE_ENV}={value!r}: {bad[0]!r} is not a sanitizer name "
                         "(expected a comma-separated list such as address,undefined)")
    return [f"-fsanitize={','.join(kinds)}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-g",
            "-fno-wrapv"]


def _sanitized_key(key: str) -> str:
    """``key``, tagged with the sanitizer flags when there are any."""
    flags = sanitize_flags()
    if not flags:
        return key
    return f"{key}-san{hashlib.sha256(' '.join(flags).encode()).hexdigest()[:8]}"


def _import_from(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BuildError(f"cannot load compiled module {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_cached(module_name: str, key: str, make_ffi: Callable[[str], cffi.FFI]) -> ModuleType:
    """Compile ``make_ffi(module_name)`` once per ``key`` and import it.

    The build happens in a private temporary folder; the finished shared
    object is moved into place atomically, so a parallel build is harmless.
    ``make_ffi`` adds ``sanitize_flags()`` to its compile and link arguments;
    the target's name gains a tag for them, so sanitized and normal builds
    never share a cache entry.
    """
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = cache_dir() / f"{module_name}-{_sanitized_key(key)}{suffix}"
    if not target.exists():
        c_compiler()
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
            ffi = make_ffi(module_name)
            try:
                built = Path(ffi.compile(tmpdir=tmp, verbose=False))
            except Exception as exc:  # distutils/setuptools raise several types
                raise BuildError(f"compiling {module_name} failed: {exc}") from exc
            os.replace(built, target)
    return _import_from(target, module_name)
