"""The parts' boundaries, checked in fresh interpreters: protocol/ loads only the standard library
and construct; the simulator never loads the gateway, the tools or the database libraries (it
is an independent peer); the gateway never loads the simulator or the tools.

Each part's modules are imported one after the other in one new process, which reports the
first module that brought in each forbidden package.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: import every module of a package, note what each one newly loads.
PROBE = r"""
import importlib, json, pkgutil, sys
part, skip = sys.argv[1], set(sys.argv[2:])
before = set(sys.modules)
names = [part] + [m.name for m in pkgutil.walk_packages(importlib.import_module(part).__path__, part + ".")]
brought = {}
for name in names:
    if name in skip or name.rsplit(".", 1)[-1] == "__main__":
        continue
    seen = set(sys.modules)
    importlib.import_module(name)
    for loaded in set(sys.modules) - seen - before:
        brought.setdefault(loaded.split(".")[0], name)
print(json.dumps({"modules": names, "brought": brought}))
"""

# Alembic runs this script itself, inside a migration; importing it alone is meaningless.
NOT_IMPORTABLE = {"gateway": ["gateway.store.migrations.env"]}


def loads(part: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, part, *NOT_IMPORTABLE.get(part, [])], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_protocol_loads_only_the_standard_library_and_construct():
    found = loads("protocol")
    assert "protocol.decoder" in found["modules"]
    foreign = {package: by for package, by in found["brought"].items()
               if package not in sys.stdlib_module_names and package not in ("protocol", "construct")}
    assert foreign == {}


@pytest.mark.parametrize("part, forbidden", [
    ("simulator", {"gateway", "tools", "sqlalchemy", "alembic"}),
    ("gateway", {"simulator", "tools"}),
])
def test_a_part_never_loads_what_it_must_not_depend_on(part, forbidden):
    found = loads(part)
    assert f"{part}.cli" in found["modules"]
    assert {package: by for package, by in found["brought"].items() if package in forbidden} == {}


def test_the_probe_sees_a_forbidden_import():
    """The check above can fail: the load test's harness may use both parts, and the probe says so."""
    found = loads("tools")
    assert found["brought"]["gateway"].startswith("tools.")
    assert found["brought"]["simulator"].startswith("tools.")


# The sync core leans on the protocol and on storage; every other part of the gateway leans on it.
CORE_MAY_IMPORT = ("gateway.sync", "gateway.store", "gateway.quietlog", "protocol")


def gateway_imports(source: str) -> set[str]:
    """The modules of the gateway and the protocol that ``source`` imports, wherever it does."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("gateway", "protocol")}


def outside_the_core(source: str) -> set[str]:
    return {name for name in gateway_imports(source) if not name.startswith(CORE_MAY_IMPORT)}


def test_the_sync_core_imports_only_the_protocol_and_storage():
    found = {path.name: outside_the_core(path.read_text()) for path in (ROOT / "gateway" / "sync").glob("*.py")}
    assert "eventlog.py" in found
    assert {name: imports for name, imports in found.items() if imports} == {}


def test_the_core_check_sees_a_module_leaning_the_wrong_way():
    assert outside_the_core("from gateway.store.notices import notify\ndef f():\n    from gateway.process.peers import Listener\n") == {
        "gateway.process.peers"}
