"""An OSError's one-line message names the path(s) it is about."""

from __future__ import annotations

import errno
import os

import pytest

from runtime.errors import os_error_message


def test_path_named() -> None:
    with pytest.raises(OSError) as caught:
        os.open("/nonexistent/dir/file", os.O_RDONLY)
    assert os_error_message(caught.value) == "/nonexistent/dir/file: No such file or directory"


def test_two_paths_and_bytes() -> None:
    with pytest.raises(OSError) as caught:
        os.rename(b"/nonexistent/a", "/nonexistent/b")
    assert os_error_message(caught.value) == (
        "/nonexistent/a -> /nonexistent/b: No such file or directory")


def test_no_path_keeps_the_message() -> None:
    message = "mount proc on /x/proc: Operation not permitted"
    assert os_error_message(OSError(errno.EPERM, message)) == message
    assert os_error_message(OSError("plain")) == "plain"
