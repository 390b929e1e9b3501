"""Imports point one way: sam3_core <- sam3_serving <- {encoder_service, decoder_service} <- sam3_bench <- sam3_cli.

The export tool (sam3_export: torch build tooling) stands beside the runtime: it imports only sam3_core
(the folder contract), and only sam3_cli and sam3_bench import it, lazily (inside the function that
needs torch), so nothing that serves requests can load torch.

The SDK (client/sam3_client, its own distribution) imports nothing of the server; the server imports
the SDK's wire contract (generated stubs, error reasons). Every import counts, including the lazy
ones inside functions. `python tests/test_architecture.py` prints the package-level graph.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "sam3_client": ROOT / "client" / "sam3_client",
    "sam3_core": ROOT / "sam3_core",
    "sam3_export": ROOT / "sam3_export",
    "sam3_serving": ROOT / "sam3_serving",
    "encoder_service": ROOT / "encoder_service",
    "decoder_service": ROOT / "decoder_service",
    "sam3_bench": ROOT / "sam3_bench",
    "sam3_cli": ROOT / "sam3_cli",
    "sam3_label_studio": ROOT / "labelstudio" / "sam3_label_studio",
}
# What each package may import of the others (itself always).
ALLOWED = {
    "sam3_client": set(),
    "sam3_core": set(),
    "sam3_export": {"sam3_core"},
    "sam3_serving": {"sam3_core", "sam3_client"},
    "encoder_service": {"sam3_serving", "sam3_core", "sam3_client"},
    "decoder_service": {"sam3_serving", "sam3_core", "sam3_client"},
    "sam3_bench": {"sam3_serving", "sam3_core", "sam3_client", "sam3_export"},
    "sam3_cli": {
        "encoder_service",
        "decoder_service",
        "sam3_bench",
        "sam3_serving",
        "sam3_core",
        "sam3_client",
        "sam3_export",
    },
    # The Label Studio ML backend (labelstudio/, its own distribution) is an SDK user like any other.
    "sam3_label_studio": {"sam3_client"},
}
# Packages that may import these only inside a function (the module must load without torch).
LAZY_ONLY = {"sam3_export"}


def imported_packages(path: Path) -> list[str]:
    """The project packages a module imports (first dotted component), lazy imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES]
    return found


def graph() -> dict[tuple[str, str], Counter[str]]:
    """(importer, imported) -> which modules of the importer do it, and how often."""
    edges: dict[tuple[str, str], Counter[str]] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            for target in imported_packages(path):
                if target != package:
                    edges.setdefault((package, target), Counter())[str(path.relative_to(ROOT))] += 1
    return edges


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_point_one_way(package: str) -> None:
    wrong = {
        f"{module} imports {target}"
        for (importer, target), modules in graph().items()
        if importer == package and target not in ALLOWED[package]
        for module in modules
    }
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: " + "; ".join(sorted(wrong))


def loaded_on_import(path: Path) -> list[str]:
    """The project packages a module imports when it is loaded: everything outside function bodies."""
    found: list[str] = []
    pending: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import):
            found += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module.split(".")[0])
        pending.extend(ast.iter_child_nodes(node))
    return found


@pytest.mark.parametrize("package", sorted(LAZY_ONLY))
def test_lazy_only_packages_are_imported_inside_functions(package: str) -> None:
    eager = [
        str(path.relative_to(ROOT))
        for importer, folder in PACKAGES.items()
        if importer != package
        for path in sorted(folder.rglob("*.py"))
        if package in loaded_on_import(path)
    ]
    assert not eager, f"import {package} inside the function that needs it (it loads torch): {eager}"


def test_the_rules_form_layers_without_cycles() -> None:
    placed: set[str] = set()
    while len(placed) < len(PACKAGES):
        layer = {p for p in PACKAGES if p not in placed and ALLOWED[p] <= placed}
        assert layer, f"the allowed imports of {sorted(set(PACKAGES) - placed)} form a cycle"
        placed |= layer


def sdk_project() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]


def sdk_dependencies() -> set[str]:
    return {re.split(r"[<>=!~\[; ]", requirement)[0].lower() for requirement in sdk_project()["dependencies"]}


def test_the_sdk_distribution_declares_no_server_dependency() -> None:
    import tomllib

    names = sdk_dependencies()
    assert names <= {"grpcio", "protobuf", "numpy", "pillow", "grpcio-status", "googleapis-common-protos"}, names
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"sam3-client=={sdk_project()['version']}" in server["dependencies"], "the service depends on this SDK"


@pytest.mark.parametrize("doc", ["README.md", "docs/architecture.md", "client/README.md"])
def test_the_docs_list_every_dependency_of_the_sdk(doc: str) -> None:
    """Where a doc says what the SDK installs (its first mention of grpcio), it names all of it."""
    names = sdk_dependencies()
    text = (ROOT / doc).read_text().lower()
    listed = " ".join(text[text.index("grpcio") :][:200].split())
    assert all(re.search(rf"\b{re.escape(name)}\b(?!-)", listed) for name in names), (names, listed)


def test_the_label_studio_backend_depends_on_the_sdk_and_an_http_server_only() -> None:
    import tomllib

    backend = tomllib.loads((ROOT / "labelstudio" / "pyproject.toml").read_text())["project"]
    sdk = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[; ]", requirement)[0].lower() for requirement in backend["dependencies"]}
    assert names == {"sam3-client", "waitress"}, names
    assert f"sam3-client=={sdk['version']}" in backend["dependencies"], "the backend depends on this very SDK"


if __name__ == "__main__":
    for (importer, target), modules in sorted(graph().items()):
        print(f"{importer:16s} -> {target:16s} {sum(modules.values()):3d}  ({', '.join(sorted(modules))})")
    sys.exit(0)


def test_nothing_cites_a_design_document_the_repository_does_not_have() -> None:
    """What matters of the founding design lives in docs/; a reference to a file users lack helps nobody."""
    cited = re.compile("DESIGN" + r"(\.md| ?§)")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    offenders = [
        name
        for name in tracked.splitlines()
        if name.endswith((".py", ".md", ".proto", ".yaml", ".toml", "Makefile", "Dockerfile"))
        and (ROOT / name).is_file()
        and cited.search((ROOT / name).read_text(errors="replace"))
    ]
    assert not offenders, f"cite docs/ instead: {offenders}"


@pytest.mark.parametrize("pyproject", ["pyproject.toml", "client/pyproject.toml", "labelstudio/pyproject.toml"])
def test_licenses_are_spdx_strings(pyproject: str) -> None:
    """A `license = { text = ... }` table makes setuptools print a deprecation banner on every install."""
    import tomllib

    project = tomllib.loads((ROOT / pyproject).read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_the_sdk_exports_only_what_a_user_can_construct_or_catch() -> None:
    import sam3_client

    for name in sam3_client.__all__:
        exported = getattr(sam3_client, name)
        assert inspect.isclass(exported) or inspect.isfunction(exported), f"{name} is neither a class nor a function"


def _modules_importing(module: str) -> set[str]:
    """The project modules (outside tests) that import `module` or one of its submodules, lazily or not."""
    found = set()
    for folder in PACKAGES.values():
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                if any(name == module or name.startswith(f"{module}.") for name in names):
                    found.add(str(path.relative_to(ROOT)))
    return found


def test_redis_is_spoken_by_the_store_and_the_redis_tooling_only() -> None:
    """Stored values have one home (sam3_serving/store/): their keys, format checks, lock and announcements
    are never re-implemented beside it. The embedded servers and the client factory are Redis tooling; the
    bench reads what a fleet stored, to report its size."""
    allowed = {"sam3_serving/redis_client.py", "sam3_serving/redis_server.py", "sam3_serving/redis_cluster.py"}
    allowed |= {"sam3_bench/concepts.py"}
    speakers = {m for m in _modules_importing("redis") if not m.startswith("sam3_serving/store/")}
    assert speakers <= allowed, f"Redis outside the store: {sorted(speakers - allowed)}"


def test_in_process_caches_are_one_class() -> None:
    """Where sam3_core.cache.LruCache can be imported, an LRU of its own (OrderedDict.move_to_end) is a second
    cache to keep right (bounds, thread safety, single flight); the bench's capacity model only simulates the
    fleet's. Packages that import only the SDK (the Label Studio backend) cannot use it."""
    keepers = {
        str(path.relative_to(ROOT))
        for package, folder in PACKAGES.items()
        if package == "sam3_core" or "sam3_core" in ALLOWED[package]
        for path in folder.rglob("*.py")
        if "move_to_end(" in path.read_text()
    }
    assert keepers <= {"sam3_core/cache.py", "sam3_bench/capacity.py"}, sorted(keepers)


def test_the_sdk_exports_every_class_its_methods_take_or_return() -> None:
    """A user can name (import, annotate) whatever a client method takes or returns, down through the
    results' fields: e.g. `Mask.polygons` is a `Polygons`, `Client.refine` takes an `ObjectResult`."""
    import dataclasses
    import typing

    import sam3_client

    def is_getter(member: object) -> bool:
        return isinstance(member, property | functools.cached_property)

    def sdk_classes(annotation: object) -> set[type]:
        ours = isinstance(annotation, type) and annotation.__module__.startswith("sam3_client")
        found = {annotation} if ours else set()
        for argument in typing.get_args(annotation):
            found |= sdk_classes(argument)
        return {cls for cls in found if not cls.__module__.startswith("sam3_client.proto")}

    seen: set[type] = set()
    pending = [
        hint
        for client in (sam3_client.Client, sam3_client.AsyncClient)
        for name, method in inspect.getmembers(client, inspect.isfunction)
        if not name.startswith("_")
        for hint in typing.get_type_hints(method).values()
    ]
    while pending:
        for cls in sdk_classes(pending.pop()) - seen:
            seen.add(cls)
            if dataclasses.is_dataclass(cls):
                pending.extend(typing.get_type_hints(cls).values())
            getters = [m.fget if isinstance(m, property) else m.func for m in vars(cls).values() if is_getter(m)]
            pending.extend(typing.get_type_hints(getter).get("return") for getter in getters)
    missing = sorted(cls.__name__ for cls in seen if cls.__name__ not in sam3_client.__all__)
    assert not missing, f"add to sam3_client.__all__: {missing}"


# sam3_core.tracking (video tracking, docs/video.md): its modules import each other only downwards in this
# list, and the image path of sam3_core never imports it.
TRACKING_LAYERS = [
    {"errors", "bfloat16", "resize", "state", "results"},
    {"bank", "serialise"},
    {"graphs"},
    {"session"},
    {"__init__"},
]


def _tracking_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {name.split(".")[2] for name in names if name.startswith("sam3_core.tracking.")}
    return found


def test_tracking_modules_import_downwards_only() -> None:
    folder = ROOT / "sam3_core" / "tracking"
    layer_of = {name: depth for depth, layer in enumerate(TRACKING_LAYERS) for name in layer}
    modules = {path.stem for path in folder.glob("*.py")}
    assert modules == set(layer_of), (
        f"place every tracking module in TRACKING_LAYERS: {sorted(modules ^ set(layer_of))}"
    )
    upward = [
        f"{path.stem} imports {target}"
        for path in sorted(folder.glob("*.py"))
        for target in _tracking_imports(path)
        if layer_of[target] >= layer_of[path.stem]
    ]
    assert not upward, upward
    outside = {m for m in _modules_importing("sam3_core.tracking") if not m.startswith("sam3_core/tracking/")}
    assert not {m for m in outside if m.startswith("sam3_core/")}, outside
