"""A command line stopped by a problem the user can fix prints one line naming the file and the fix."""

from __future__ import annotations

import pytest

from vidtune.errors import DataError, command_line


def test_command_line_turns_user_errors_into_one_line(capsys, tmp_path):
    @command_line
    def missing_file(path):
        open(path)

    @command_line
    def bad_data():
        raise DataError("not valid JSON", file="a.json", record="line 3", fix="repair the file")

    assert missing_file(tmp_path / "gone.json") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{tmp_path / 'gone.json'}: No such file or directory" in error
    assert bad_data() == 2
    assert capsys.readouterr().err == \
        "error: a.json (record line 3): not valid JSON. What to do: repair the file\n"


def test_command_line_keeps_tracebacks_of_real_faults():
    @command_line
    def broken():
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        broken()
