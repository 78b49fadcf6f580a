"""``backend.spec`` read as a program, without PyInstaller: which executables it builds where.

The build itself runs in ``.ci/run`` (Linux); Windows cannot be built here, so the table the
spec builds from is evaluated for both platforms, and the spec is checked to build every
entry of it (and nothing else) with that entry's console setting.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

SPEC = Path(__file__).resolve().parents[2] / "backend.spec"


def _tree() -> ast.Module:
    return ast.parse(SPEC.read_text(encoding="utf-8"), str(SPEC))


def executables(windows: bool) -> Any:
    """The spec's ``EXECUTABLES`` as PyInstaller would see it on that platform."""
    for node in _tree().body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [
            "EXECUTABLES"
        ]:
            code = compile(ast.Expression(node.value), str(SPEC), "eval")
            return eval(code, {"WINDOWS": windows})  # the spec's own literal, nothing else
    raise AssertionError("backend.spec defines no EXECUTABLES table")


def test_windows_gets_dbtkd_exe_without_a_console_and_dbtkctl_exe_with_one() -> None:
    assert executables(windows=True) == {"dbtkd.exe": False, "dbtkctl.exe": True}


def test_elsewhere_both_are_console_programs_without_a_suffix() -> None:
    assert executables(windows=False) == {"dbtkd": True, "dbtkctl": True}


def test_the_spec_builds_each_entry_with_its_console_setting() -> None:
    tree = _tree()
    (exe_call,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "EXE"
    ]
    keywords = {k.arg: ast.unparse(k.value) for k in exe_call.keywords}
    assert keywords["console"] == "console"  # not a constant: the table decides
    assert keywords["name"] == "name"
    (collect,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "COLLECT"
    ]
    (built,) = [arg for arg in collect.args if isinstance(arg, ast.Starred)]
    # Every executable comes from the table, none is added by hand.
    assert "EXECUTABLES.items()" in ast.unparse(built)
    assert not [
        a for a in collect.args if isinstance(a, ast.Call) and ast.unparse(a.func) == "executable"
    ]
