"""dbtkctl's import graph, walked for every command: nothing outside the standard library and
the modules named here, each of which says in its docstring that dbtkctl imports it (issue 16,
item 5). A daemon-only package (Starlette, asyncio's event loop, a driver) on this path would
cost every ``dbtkctl port`` the app runs at each window's start."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ProcessReaper, env_for

REPO = Path(__file__).resolve().parents[2]
# dbtkd's stdlib-only modules that dbtkctl uses; ipc._windows stands in for ipc._unix there.
ALLOWED = {
    "dbtkd",
    "dbtkd.errors",
    "dbtkd.ipc",
    "dbtkd.ipc._unix",
    "dbtkd.ipc._windows",
    "dbtkd.lock",
    "dbtkd.logfile",
    "dbtkd.paths",
    "dbtkd.port",
    "dbtkd.procstats",
    "dbtkd.protocol",
    "dbtkd.services",
    "dbtkd.settings",
    "dbtkd.sockshare",
    "dbtkd.state",
    "dbtkd.systemd",
    "dbtkd.units",
}
# What the interpreter itself loads before any code of ours (site, a venv's setuptools shim).
INTERPRETER = ("__main__", "_distutils_hack", "_sysconfigdata")
VERBS = [
    ["port", "--port-range", "0"],
    ["url"],
    ["status"],
    ["status", "--json"],
    ["logs", "-n", "1"],
    ["version"],
    ["restart", "--port-range", "0"],
    ["service", "status"],
    ["stop"],
    ["status"],
    ["start", "--port-range", "0"],
    ["stop"],
    ["port", "--no-start"],
    ["--help"],
    ["port", "--help"],
    ["frobnicate"],
]
PROBE = """
import json, sys
from dbtkctl.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def foreign(modules: list[str]) -> list[str]:
    return [
        name
        for name in modules
        if name.partition(".")[0] not in sys.stdlib_module_names
        and not name.startswith(("dbtkctl", *INTERPRETER))
        and name not in ALLOWED
    ]


def test_every_command_imports_only_the_stdlib_and_the_named_modules(
    home: Path, reaper: ProcessReaper
) -> None:
    for verb in VERBS:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, *verb],
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=60,
        )
        reaper.track_home(home)
        modules = json.loads(done.stdout.splitlines()[-1])
        assert foreign(modules) == [], f"dbtkctl {' '.join(verb)} imported {foreign(modules)}"
        assert "asyncio" not in modules, f"dbtkctl {' '.join(verb)} imported asyncio"


@pytest.mark.parametrize("module", sorted(ALLOWED - {"dbtkd"}))
def test_each_module_on_the_path_says_dbtkctl_imports_it(module: str) -> None:
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = REPO / module.replace(".", "/") / "__init__.py"
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert "dbtkctl" in docstring, f"{module}'s docstring does not say dbtkctl imports it"
