"""The package layout: no import cycles, the explanation side free of the PyTorch port, one set of role bits.

The import graph is read from the source (ast), not by importing: an edge is
a ``from .x import`` / ``from parity.x import`` / ``import parity.x``
statement at module level (function-level imports are a separate check).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import parity
from parity import roles

PACKAGE = Path(parity.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """Project modules an ImportFrom in ``module`` names (the module, or its submodules where imported)."""
    if node.level:
        base = module.split(".")
        if not MODULES[module].name == "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("parity"):
        return []
    found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return found or ([target] if target in MODULES else [])


def _imports(module: str, *, module_level: bool) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    nodes = tree.body if module_level else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            out.update(_resolve(module, node))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in MODULES)
    if module_level:  # imports under `if TYPE_CHECKING:` or try/except at top level count too
        for node in tree.body:
            if isinstance(node, (ast.If, ast.Try)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom):
                        out.update(_resolve(module, sub))
                    elif isinstance(sub, ast.Import):
                        out.update(a.name for a in sub.names if a.name in MODULES)
    out.discard(module)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_module_level_imports_have_no_cycle():
    graph = {m: _imports(m, module_level=True) for m in MODULES}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


PORT = ("parity.torch", "parity.torch_layer", "parity.torch_box", "parity.torch_loss")
# The judge: nothing that excuses or explains a difference may use a candidate (the port is one).
JUDGE = ("parity.facts", "parity.diagnosis", "parity.compare", "parity.diff", "parity.tolerance")
GROUND = {"parity.roles": set(), "parity.result": set(), "parity.errors": set(),
          "parity.tolerance": {"parity.errors"}}


def _uses_port(module: str, *, module_level: bool) -> set[str]:
    return {m for m in _imports(module, module_level=module_level) if m.startswith(PORT)}


@pytest.mark.parametrize("module", JUDGE)
def test_the_judge_imports_nothing_from_the_port_anywhere(module):
    assert not _uses_port(module, module_level=False), f"{module} imports the PyTorch port"


@pytest.mark.parametrize("module", sorted(GROUND))
def test_the_ground_floor_imports_only_the_ground_floor(module):
    assert _imports(module, module_level=False) <= GROUND[module], _imports(module, module_level=False)


def test_the_port_imports_no_reference_backend():
    for module in PORT:
        used = _imports(module, module_level=False)
        assert not {m for m in used if m.startswith(("parity.reference", "parity.backends"))}, (module, used)


def test_role_bits_and_branch_names_match_the_compiled_reference():
    from parity.backends.c_reference import load_reference
    from parity.backends.ref_build import branch_count

    mod = load_reference()
    ffi, lib = mod.ffi, mod.lib
    for name, bit in roles.ROLE_BITS.items():
        assert getattr(roles, f"ROLE_{name}") == bit
    # the compiled module's own constants (the cdef does not declare them: ask the C compiler)
    compiled = _compiled_role_bits()
    assert compiled == roles.ROLE_BITS
    assert branch_count() == len(roles.BRANCHES)
    names = tuple(ffi.string(lib.yref_branch_name(k)).decode() for k in range(len(roles.BRANCHES)))
    assert names == roles.BRANCHES


def _compiled_role_bits() -> dict[str, int]:
    """YREF_ROLE_* as the C compiler sees them, through a tiny cffi module built by the loader."""
    import cffi

    from parity.backends.native import load_cached

    names = sorted(roles.ROLE_BITS)
    cdef = "".join(f"#define YREF_ROLE_{n} ...\n" for n in names)
    ref = roles.ref_dir()

    def make(module_name: str) -> cffi.FFI:
        ffi = cffi.FFI()
        ffi.cdef(cdef)
        ffi.set_source(module_name, '#include "yolo_ref.h"\n', include_dirs=[str(ref)])
        return ffi

    import hashlib
    key = hashlib.sha256(((ref / "yolo_ref.h").read_bytes() + cdef.encode())).hexdigest()[:16]
    mod = load_cached("_darknet_ref_roles", key, make)
    return {n: int(getattr(mod.lib, f"YREF_ROLE_{n}")) for n in names}
