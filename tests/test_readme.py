"""The README stays true: its first screen's two commands exist, every worker flag is documented, and every
snippet of the README, client/README.md, docs/concepts.md and docs/video.md runs as printed."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

import concept_references
import references
import video_references
from sam3_cli.main import build_parser
from sam3_cli.options import env_name
from service_stack import serve_subprocess

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def worker_options() -> dict[str, argparse.Action]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {}
    for name in ("serve", "encoder", "decoder"):
        for action in commands.choices[name]._actions:
            if action.option_strings and action.dest not in ("help", "debug"):
                options[max(action.option_strings, key=len)] = action
    return options


def test_first_screen_gives_the_two_commands_and_they_exist() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    assert "make serve" in first_screen and "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_serve_installs_the_runtime_only_and_make_test_adds_the_tooling(tmp_path: Path) -> None:
    """From a fresh clone in either order (make's dry run, on a venv path that does not exist yet)."""
    venv = tmp_path / "venv"

    def installs(target: str) -> list[str]:
        ran = subprocess.run(["make", "-n", f"VENV={venv}", target], cwd=ROOT, capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr
        return [
            line.split("pip install --quiet ", 1)[1]
            for line in ran.stdout.splitlines()
            if "pip install --quiet -e" in line
        ]

    runtime, tooling = "-e ./client -e .", "-e ./client -e '.[test,bench]' -e ./labelstudio"
    assert installs("serve") == [runtime]
    assert installs("test") == [runtime, tooling]
    venv.mkdir()
    (venv / ".runtime").touch()  # `make serve` ran first
    assert installs("test") == [tooling]
    (venv / ".installed").touch()  # then `make test`
    assert installs("serve") == []


def test_the_readme_quotes_the_parity_figures_of_the_model_contract() -> None:
    """One measurement (`python tests/test_parity.py` prints it in this form), quoted alike in both places."""
    figures = re.compile(
        r"worst mask agreement [\d.]+%, IoU scores within [\d.]+e-\d+, presence logits within [\d.]+e-\d+"
    )
    contract = figures.findall(" ".join((ROOT / "docs" / "model-contract.md").read_text().split()))
    assert len(contract) == 1
    assert figures.findall(" ".join(README.split())) == contract


def test_every_worker_flag_and_its_environment_variable_is_documented() -> None:
    for flag, action in worker_options().items():
        assert f"`{flag}`" in README, f"{flag} missing from the README's configuration table"
        if "[env " in (action.help or ""):
            assert f"`{env_name(flag)}`" in README, f"{env_name(flag)} missing from the README"


def test_documented_flags_exist() -> None:
    table = README.split("## Configuration", 1)[1].split("## Where", 1)[0]
    documented = set(re.findall(r"^\| `(--[a-z-]+)`", table, re.M))
    assert documented == set(worker_options())


# ---------------------------------------------------------------- every snippet runs as printed

# Every file whose ```python and ```console snippets run, and the model its `sam3 serve` needs.
SNIPPET_FILES = {
    ROOT / "README.md": references.MODEL_DIR,
    ROOT / "client" / "README.md": references.MODEL_DIR,
    ROOT / "docs" / "concepts.md": concept_references.MODEL_DIR,
    ROOT / "docs" / "video.md": video_references.MODEL_DIR,
}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")
# The address the snippets use; the test's own `sam3 serve` listens on a free port instead.
DOCUMENTED_TARGET = "localhost:50051"


def snippets(language: str) -> list[tuple[str, str]]:
    """(file name, body) of every ```language block."""
    found = []
    for path in SNIPPET_FILES:
        for body in re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.M | re.S):
            found.append((path.relative_to(ROOT).as_posix(), body))
    return found


def same_output(actual: str, expected: str) -> bool:
    """Equal text, and numbers equal to 1e-4, absolute or relative: ONNX Runtime may differ in the last
    float bits, which can flip a mask pixel whose logit is within a hair of 0 (one in 167193 here)."""
    if NUMBER.sub("#", actual).split() != NUMBER.sub("#", expected).split():
        return False
    pairs = zip(NUMBER.findall(actual), NUMBER.findall(expected), strict=True)
    return all(abs(float(a) - float(b)) <= 1e-4 * max(1.0, abs(float(b))) for a, b in pairs)


@pytest.fixture(scope="module")
def serving() -> Iterator[Callable[[str], str]]:
    """The target of a `sam3 serve` for a snippet file's model, started when a snippet first needs it."""
    with ExitStack() as stack:
        targets: dict[Path, str] = {}

        def target(where: str) -> str:
            model = SNIPPET_FILES[ROOT / where]
            if model not in targets:
                targets[model] = stack.enter_context(serve_subprocess(model_dir=model))[1]
            return targets[model]

        yield target


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder where the snippets' relative paths (tests/fixtures/...) resolve and their outputs land."""
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    return tmp_path


def sam3_tours() -> list[tuple[str, str]]:
    """The console blocks that run the `sam3` command (the Node.js one runs in tests/test_node_client.py)."""
    return [(where, block) for where, block in snippets("console") if block.startswith("$ sam3 ")]


def test_every_snippet_file_has_snippets() -> None:
    assert len(snippets("python")) >= 3 and len(sam3_tours()) >= 3
    others = [block for _, block in snippets("console") if not block.startswith("$ sam3 ")]
    assert [re.findall(r"^\$ (\S+)", block, re.M) for block in others] == [["npm", "NODE_PATH=tests/node/node_modules"]]


@pytest.mark.parametrize(("where", "code"), snippets("python"), ids=lambda v: v if v.endswith(".md") else "")
def test_python_snippets_run_as_printed(where: str, code: str, serving: Callable[[str], str], workdir: Path) -> None:
    expected = "\n".join(line[2:] for line in code.splitlines() if line.startswith("# "))
    ran = subprocess.run(
        [sys.executable, "-c", code.replace(DOCUMENTED_TARGET, serving(where))],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=120,
    )
    assert ran.returncode == 0, f"{where}:\n{code}\n{ran.stderr}"
    # To the letter: a snippet prints what is stable (scores rounded), as a user's own run will show it.
    assert ran.stdout.rstrip("\n") == expected, f"{where} prints:\n{ran.stdout}\nnot:\n{expected}"


@pytest.mark.parametrize(("where", "block"), sam3_tours(), ids=lambda v: v if v.endswith(".md") else "")
def test_console_snippets_run_as_printed(where: str, block: str, serving: Callable[[str], str], workdir: Path) -> None:
    command, _, expected = block.partition("\n$ ")[0].removeprefix("$ ").partition("\n" + _output_start(block))
    command = command.replace("\\\n", " ")
    if DOCUMENTED_TARGET in command:
        command = command.replace(DOCUMENTED_TARGET, serving(where))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=workdir, env=env, timeout=120)
    assert ran.returncode == 0, f"{where}: {command}\n{ran.stderr}"
    assert same_output(ran.stdout, _output_start(block) + expected), f"{where} prints:\n{ran.stdout}"


def _output_start(block: str) -> str:
    """The first output line of a console block: the first line after the (continued) command."""
    lines = block.splitlines()
    index = 0
    while lines[index].endswith("\\"):
        index += 1
    return lines[index + 1] if index + 1 < len(lines) else ""
