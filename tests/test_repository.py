"""The repository itself (issue 24): one list of dataset formats that the schema, the docs and the tests
follow; no dead code; no build artefacts committed; install hints that do what they say."""

from __future__ import annotations

import ast
import re
import subprocess
from collections import Counter

import yaml
from conftest import REPO

from vidtune.adapters import FORMATS
from vidtune.config import GENERATED_FORMATS, _schema, options_definition

# Files that may use a name of the package: code, rules, schema, report captions, tests, benchmarks.
USERS = ("src/**/*.py", "src/**/*.yaml", "workflow/**/*.py", "rules/*.smk", "Snakefile", "tests/*.py",
         "benchmarks/*.py", "workflow/report/*.rst")


def test_schema_formats_are_the_adapters():
    dataset = _schema()["definitions"]["dataset"]
    assert dataset["properties"]["format"]["enum"] == list(FORMATS)
    covered = [fmt for rule in dataset["allOf"] for fmt in
               rule["if"]["properties"]["format"].get("enum", [rule["if"]["properties"]["format"].get("const")])]
    assert sorted(covered) == sorted(FORMATS), "each format has exactly one options definition"
    assert all(options_definition(fmt) in _schema()["definitions"] for fmt in FORMATS)
    assert GENERATED_FORMATS <= set(FORMATS)


def test_docs_list_every_format():
    readme = (REPO / "README.md").read_text()
    table = readme.split("| `format` |", 1)[1].split("\n\n", 1)[0]
    in_table = set(re.findall(r"^\| `(\w+)`(?: / `(\w+)`)?", table, re.MULTILINE))
    assert {name for row in in_table for name in row if name} == set(FORMATS), "README's dataset table"
    listed = readme.split("each with a `format` (", 1)[1].split(")", 1)[0]
    assert re.findall(r"`(\w+)`", listed) == list(FORMATS), "README's configuration section"
    datasets = (REPO / "docs" / "datasets.md").read_text()
    assert re.search(r"format: \w+ +# (.*)", datasets).group(1).split(" | ") == list(FORMATS)
    sections = re.findall(r"^## `(\w+)`(?: \(and `(\w+)`\))?", datasets, re.MULTILINE)
    assert {name for row in sections for name in row if name} == set(FORMATS), "a section per format"


def test_no_unused_definitions():
    """Every function, class and constant defined at a module's top level is used somewhere else."""
    uses = Counter(word for pattern in USERS for path in REPO.glob(pattern)
                   for word in re.findall(r"\w+", path.read_text(encoding="utf-8")))
    unused = []
    for path in sorted((REPO / "src" / "vidtune").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
            else:
                continue
            unused += [f"{path.relative_to(REPO)}: {name}" for name in names if not name.startswith("__")
                       and uses[name] < 2]
    assert unused == []


def test_no_build_artefacts_are_committed_or_addable():
    tracked = subprocess.run(["git", "ls-files", "*.whl", "*.tar.gz", "*.egg"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked == []
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "some-package-1.0-py3-none-any.whl",
                              "sub/dir/x.whl"], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout.split() == ["some-package-1.0-py3-none-any.whl", "sub/dir/x.whl"]


def test_install_hints_are_true():
    """requirements.txt pins every package; the conda environment installs exactly it and the package, by
    paths that exist from its own folder (conda runs pip there), and names no other torch build."""
    requirements = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in requirements if line]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", line) for line in requirements), requirements
    env_text = (REPO / "envs" / "vidtune.yaml").read_text()
    env = yaml.safe_load(env_text)
    pip = next(entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict))
    targets = [line.split(maxsplit=1)[1] for line in pip]
    assert [line.split()[0] for line in pip] == ["-r", "-e"]
    assert (REPO / "envs" / targets[0]).resolve() == REPO / "requirements.txt"
    assert (REPO / "envs" / targets[1]).resolve() == REPO
    names = {entry.split("=")[0] for entry in env["dependencies"] if isinstance(entry, str)}
    for comment in re.findall(r"#(.*)", env_text):  # a package a comment names is one the file installs
        for package in re.findall(r"\b(pytorch[\w-]*|torch[\w-]*|cuda[\w-]*)\b", comment):
            assert package in names or package in {r.split("==")[0] for r in requirements}, comment
    makefile = (REPO / "Makefile").read_text()
    assert "envs/install_torch.sh" in makefile and "envs/install_torch.sh" in (REPO / "requirements.txt").read_text()
