"""`Decline`, the one "not here, because ..." value, and a scan of optkit's source for the signals it
replaced: `X | str` and `X | str | None` results whose string is a reason, `(X | None, str)` and
`(ok, message)` tuples, and `str` results where '' means "fine"."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from optkit.core.contract import Decline

SOURCE = Path(__file__).resolve().parents[2] / "optkit"
# Where rules, checks, verification and commands live: every package and module that says "not
# here, because ..." (optkit.io's loading and validation raise InputError instead).
SCANNED = ["passes", "check", "cli", "core", "swap.py", "embedding.py", "preprocessing.py",
           "inspection.py", "combine.py", "ensembles.py", "augment.py", "fusion.py"]  # fmt: skip

# Builtin scalars: `int | str` (a static size or a symbolic dim) is a value, not a decline.
_VALUES = {"int", "float", "bool", "bytes", "str", "Path", "PathLike"}
# A docstring saying that '' is the "nothing wrong" answer of a function returning str.
_EMPTY_MEANS_FINE = re.compile(r"''\s*(when|if|on success|means)|\(''\)|or ''")


# --- Decline ------------------------------------------------------------------------------------


def test_a_decline_needs_a_reason():
    with pytest.raises(ValueError, match="needs a reason"):
        Decline("")


def test_a_decline_reads_as_its_reason():
    why = Decline("its mask output is used")
    assert (
        str(why) == "its mask output is used" and f"kept: {why}" == "kept: its mask output is used"
    )
    assert why.reason == "its mask output is used"


def test_prefixed_puts_context_before_the_reason_and_keeps_the_original():
    why = Decline("intermediate 'e' is a graph output")
    assert why.prefixed("Gelu pattern, but ") == Decline(
        "Gelu pattern, but intermediate 'e' is a graph output"
    )
    assert why.reason == "intermediate 'e' is a graph output"


def test_a_decline_is_a_frozen_value():
    why = Decline("training_mode is true")
    assert why == Decline("training_mode is true") and why != Decline("training_mode is false")
    assert hash(why) == hash(Decline("training_mode is true"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        why.reason = "other"  # type: ignore[misc]


def test_a_decline_is_never_falsy():
    """Callers test `is None` or `isinstance(x, Decline)`; a Decline is never an empty 'fine'."""
    assert bool(Decline("x"))


# --- the source scan ------------------------------------------------------------------------------


def _parsed(annotation: ast.expr) -> ast.expr:
    """A quoted annotation ("Match | str | None") as the expression it quotes."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return ast.parse(annotation.value, mode="eval").body
    return annotation


def _members(annotation: ast.expr) -> list[ast.expr]:
    """The members of an `A | B | C` union (one member for anything else)."""
    annotation = _parsed(annotation)
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return _members(annotation.left) + _members(annotation.right)
    return [annotation]


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _old_shape(annotation: ast.expr) -> str:
    """Which old decline signal `annotation` (a return type) is, or ''."""
    members = _members(annotation)
    names = [_name(m) for m in members]
    others = [m for m, n in zip(members, names, strict=True) if n != "str" and not _is_none(m)]
    if "str" in names and len(others) == 1 and _name(others[0]) not in _VALUES:
        return "X | str (| None): a result or the reason why not"
    if len(members) == 1 and isinstance(members[0], ast.Subscript):
        outer, inner = _name(members[0].value), members[0].slice
        if outer == "tuple" and isinstance(inner, ast.Tuple) and len(inner.elts) >= 2:
            *front, last = inner.elts
            optional = any(any(_is_none(m) for m in _members(e)) for e in front)
            if _name(last) == "str" and (optional or _name(front[0]) == "bool"):
                return "(X | None, str) or (ok, message): a result and the reason why not"
        if outer == "Callable" and isinstance(inner, ast.Tuple) and len(inner.elts) == 2:
            return _old_shape(inner.elts[1])
    return ""


def _returns_empty_for_fine(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A `-> str` function whose docstring says '' is its "nothing wrong" answer."""
    if node.returns is None or _name(_parsed(node.returns)) != "str":
        return False
    return bool(_EMPTY_MEANS_FINE.search(ast.get_docstring(node) or ""))


def old_decline_signals(path: Path) -> list[str]:
    """'file:line name: what' for each function result or Callable alias of an old shape."""
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(SOURCE.parent) if path.is_relative_to(SOURCE) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            shape = _old_shape(node.returns)
            if not shape and _returns_empty_for_fine(node):
                shape = "str where '' means fine"
            if shape:
                found.append(f"{where}:{node.lineno} {node.name}: {shape}")
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Subscript):
            shape = _old_shape(node.value)
            if shape and _name(node.value.value) == "Callable":
                names = ", ".join(_name(t) for t in node.targets)
                found.append(f"{where}:{node.lineno} {names}: {shape}")
    return found


def test_the_scan_finds_each_old_shape(tmp_path):
    """The scan itself: each old signal is found, the Decline forms and plain values are not."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from collections.abc import Callable\n"
        "def a(x) -> Match | str | None: ...\n"
        "def b(x) -> Verdict | str: ...\n"
        "def c(x) -> tuple[list[int] | None, str]: ...\n"
        "def d(x) -> tuple[bool, str]: ...\n"
        "def e(x) -> str:\n    '''Why not ('' when it can).'''\n"
        "R = Callable[[int], 'Plan | str']\n"
        "def f(x) -> Match | Decline | None: ...\n"
        "def g(x) -> Decline | None: ...\n"
        "def h(x) -> int | str | None: ...\n"
        "def i(x) -> str:\n    '''The name.'''\n"
        "def j(x) -> tuple[str, tuple[int, ...]]: ...\n"
        "def k(x) -> ir.Model | str | os.PathLike: ...\n"
    )
    found = [line.split(" ")[1].rstrip(":") for line in old_decline_signals(probe)]
    assert found == ["a", "b", "c", "d", "e", "R"]


def test_no_old_decline_signal_is_left_in_optkit():
    """Every "not here, because ..." in optkit is a `Decline` (see `optkit.core.contract`)."""
    paths = [p for part in SCANNED for p in sorted((SOURCE / part).glob("**/*.py"))]
    paths += [SOURCE / part for part in SCANNED if part.endswith(".py")]
    assert len(paths) > 50 and all(p.exists() for p in paths)  # it reads the tree it means to
    left = [hit for path in paths for hit in old_decline_signals(path)]
    assert not left, "old decline signals left:\n" + "\n".join(left)
