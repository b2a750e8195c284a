"""The package's shape: no library module imports the project from inside a function (the
way import cycles used to be dodged; `.importlinter`, run by `make test`, forbids the cycles
and the upward arrows themselves), and no library file is a god file."""

import ast
import os

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "phenaki_jax")
# The commands import the library inside `main`, after re-executing with huge pages
# (cli/__init__.py); everything below them imports at the top.
COMMANDS = os.path.join(PACKAGE, "cli")
MAX_LINES = 450


def _library_files():
    for directory, _, names in os.walk(PACKAGE):
        if directory.startswith(COMMANDS):
            continue
        for name in names:
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def test_no_library_module_imports_the_project_inside_a_function():
    found = []
    for path in _library_files():
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                module = (inner.module if isinstance(inner, ast.ImportFrom)
                          else inner.names[0].name if isinstance(inner, ast.Import) else "")
                if module and module.split(".")[0] == "phenaki_jax":
                    found.append(f"{os.path.relpath(path, ROOT)}:{inner.lineno} {module}")
    assert not found, found


def test_no_library_file_is_over_the_limit():
    long = {os.path.relpath(p, ROOT): n for p in _library_files()
            if (n := sum(1 for _ in open(p))) > MAX_LINES}
    assert not long, long
