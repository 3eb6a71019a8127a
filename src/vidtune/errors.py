"""The few exception types vidtune raises for problems a user can fix.

Each carries where the problem is (a file, and a record in it when there is one) and what to do, so the
message a rule prints is enough to act on without reading a traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

# The exit status of a command line stopped by a problem the user can fix (argparse uses it too).
USAGE_EXIT_STATUS = 2


class VidtuneError(Exception):
    """A problem the user can fix: names the file, the record and the fix."""

    def __init__(self, problem: str, *, file: str | None = None, record: str | None = None,
                 fix: str | None = None):
        self.problem = problem
        self.file = None if file is None else str(file)
        self.record = record
        self.fix = fix
        super().__init__(self._message())

    def _message(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}"
            if self.record:
                where += f" (record {self.record})"
            where += ": "
        message = where + self.problem
        if self.fix:
            message += f". What to do: {self.fix}"
        return message


class ConfigError(VidtuneError):
    """The workflow configuration is wrong (unknown key, wrong type, missing path, bad reference)."""


class DataError(VidtuneError):
    """An input data file cannot be used as a whole (not valid JSON/CSV, no usable sample left)."""


class MediaError(VidtuneError):
    """One video or image cannot be decoded; the sample is rejected with this reason. ``code`` is the
    reason's class (one of :data:`vidtune.rejects.REASONS`)."""

    def __init__(self, problem: str, *, code: str = "unreadable_media", **where):
        self.code = code
        super().__init__(problem, **where)


class ModelError(VidtuneError):
    """A model folder is not a usable model, or a trained/merged model failed its own check."""


def command_line(main: Callable[..., int | None]) -> Callable[..., int | None]:
    """Wrap a command line's ``main``: a :class:`VidtuneError`, or a file that cannot be opened, ends it with
    one line on standard error naming the file and the fix, and exit status 2, rather than a traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except VidtuneError as error:
            message = str(error)
        except OSError as error:
            if error.filename is None:  # not about a file the user named: a real fault, keep its traceback
                raise
            message = f"{error.filename}: {error.strerror or error}. What to do: check the path"
        print(f"error: {message}", file=sys.stderr)
        return USAGE_EXIT_STATUS

    return run
