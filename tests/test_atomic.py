"""Atomic writes leave either the complete new output or the old one, never a partial file."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from vidtune.atomic import atomic_dir, atomic_path, read_json, read_jsonl, write_json, write_jsonl
from vidtune.errors import DataError
from vidtune.fingerprint import claim_state_folder, fingerprint


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temp:
            temp.write_text("{half")
            raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_outputs_get_the_usual_mode(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"b": 2, "a": 1}])
    mode = stat.S_IMODE(os.stat(tmp_path / "x.jsonl").st_mode)
    assert mode == 0o666 & ~_umask()
    assert (tmp_path / "x.jsonl").read_text() == '{"b": 2, "a": 1}\n'


def _umask():
    current = os.umask(0)
    os.umask(current)
    return current


def test_atomic_dir_appears_whole(tmp_path):
    target = tmp_path / "frames"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as temp:
            (temp / "frame_000001.jpg").write_bytes(b"x")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as temp:
        (temp / "frame_000001.jpg").write_bytes(b"x")
    assert [p.name for p in target.iterdir()] == ["frame_000001.jpg"]


def test_state_folder_is_kept_only_for_the_same_fingerprint(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    state = tmp_path / "checkpoints"
    first = fingerprint([data], {"learning_rate": 1e-4})
    assert claim_state_folder(state, first) is False
    (state / "checkpoint-2").mkdir()
    assert claim_state_folder(state, first) is True
    assert (state / "checkpoint-2").is_dir()
    changed = fingerprint([data], {"learning_rate": 2e-4})
    assert changed != first
    assert claim_state_folder(state, changed) is False
    assert not (state / "checkpoint-2").exists()


def test_readers_name_the_file_and_the_line(tmp_path):
    """One reader per file kind (issue 24): a broken JSON Lines line or JSON file fails naming both."""
    lines = tmp_path / "predictions.jsonl"
    lines.write_text('{"id": "a"}\n\n{"id": "b", \n{"id": "c"}\n')
    with pytest.raises(DataError) as error:
        read_jsonl(lines)
    assert str(lines) in str(error.value) and "line 3" in str(error.value)
    document = tmp_path / "metrics.json"
    document.write_text('{\n  "base": {,\n}')
    with pytest.raises(DataError) as error:
        read_json(document, fix="rerun score")
    assert str(document) in str(error.value) and "line 2" in str(error.value) and "rerun score" in str(error.value)
    write_json(document, {"a": [1]})
    assert read_json(document) == {"a": [1]}


def _json_calls(path: Path) -> list[str]:
    """Where a file parses JSON itself: json.load/json.loads calls, and (scripts) files opened by hand."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            owner = getattr(function.value, "id", "") if isinstance(function, ast.Attribute) else ""
            if (owner == "json" and name in ("load", "loads")) or name == "open":
                found.append(f"{path.name}:{node.lineno} {owner + '.' if owner else ''}{name}")
    return found


def test_scripts_read_json_and_jsonl_through_the_readers():
    """Every workflow script reads its JSON and JSON Lines inputs with vidtune.atomic's readers, so a broken
    line says which file and line; none parses or opens files itself."""
    scripts = sorted((Path(__file__).resolve().parents[1] / "workflow" / "scripts").glob("*.py"))
    assert scripts and [call for script in scripts for call in _json_calls(script)] == []
