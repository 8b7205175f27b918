"""Packaging: pyproject.toml is the one source of pinned versions; the Dockerfile installs it and pins nothing."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PINS = ["torch==2.14.1", "torchvision==0.29.1", "torch-pruning==1.6.1", "kfp==2.17.3", "mlflow==3.17.2",
        "ray[tune]==2.60.0"]
SPECIFIER = re.compile(r"[A-Za-z0-9_.\[\]-]+\s*(==|>=|<=|~=|!=|===|<|>)\s*\d")


def dockerfile_commands() -> list[str]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pip_installs() -> list[list[str]]:
    """Arguments of every `pip install` in the Dockerfile's RUN instructions."""
    installs = []
    for command in dockerfile_commands():
        if command.startswith("RUN"):
            for part in re.split(r"&&|;|\|\|", command[3:]):
                words = part.split()
                if "pip" in " ".join(words[:3]) and "install" in words:
                    installs.append(words[words.index("install") + 1:])
    return installs


def test_pyproject_pins_the_stack():
    dependencies = PYPROJECT["project"]["dependencies"]
    for pin in PINS:
        assert pin in dependencies, f"{pin} missing from pyproject.toml dependencies"


def test_console_script():
    # the console script lives at the edge: idap/ never imports orchestration code
    assert PYPROJECT["project"]["scripts"]["idap"] == "pipelines.cli:main"


def test_dockerfile_installs_the_project_and_pins_nothing():
    installs = pip_installs()
    assert installs, "the Dockerfile must pip install the project"
    for arguments in installs:
        packages = [a for a in arguments if not a.startswith("-")]
        assert packages == ["."], f"pip may install only the project itself (versions from pyproject): {arguments}"
    for command in dockerfile_commands():
        assert not SPECIFIER.search(command.split("#")[0]) or command.startswith("FROM"), command
    names = {re.split(r"[\[=<>~!]", d)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    for command in dockerfile_commands():
        if command.startswith("RUN"):
            assert not names & set(re.findall(r"[a-z0-9_-]+", command.lower())) - {"idap"}, command


def test_dockerfile_copies_every_package_pyproject_ships():
    copied = {c.split()[1].rstrip("/") for c in dockerfile_commands() if c.startswith("COPY")}
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the image"
    assert {"pyproject.toml", "README.md"} <= {w for c in dockerfile_commands() if c.startswith("COPY")
                                                for w in c.split()[1:-1]}
