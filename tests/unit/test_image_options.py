"""A container of an image: docker's rules for its command, environment, working
directory and user (pure logic: the image is given by a resolver)."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.errors import NotFound, SpecError
from runtime.images.store import normalize_name
from supervisor.run_options import create_options


def _resolver(entrypoint: list[str], cmd: list[str], **extra: Any) -> Any:
    defaults = {"env": ["PATH=/bin", "A=image"], "entrypoint": entrypoint, "cmd": cmd,
                "workdir": extra.get("workdir", ""), "user": extra.get("user", "")}

    def resolve(ref: str) -> Any:
        if ref != "img:latest" and ref != "img":
            raise NotFound(f"no such image: {ref}")
        return ("/layers/top", "/layers/base"), defaults, "sha256:" + "a" * 64
    return resolve


@pytest.mark.parametrize(("entrypoint", "cmd", "given", "runs"), [
    ([], ["sh"], [], ["sh"]),                                   # Cmd alone
    ([], ["sh"], ["echo", "x"], ["echo", "x"]),                 # a command replaces Cmd
    (["/init"], ["serve"], [], ["/init", "serve"]),             # Entrypoint + Cmd
    (["/init"], ["serve"], ["debug"], ["/init", "debug"]),      # Entrypoint stays
])
def test_entrypoint_and_cmd_as_docker(entrypoint: list[str], cmd: list[str],
                                      given: list[str], runs: list[str]) -> None:
    o = create_options({"image": "img", "command": given}, _resolver(entrypoint, cmd))
    assert list(o.request.args) == runs
    assert o.request.lowers == ("/layers/top", "/layers/base")
    assert o.image_id == "sha256:" + "a" * 64


def test_env_workdir_user_come_from_the_image_unless_given() -> None:
    resolve = _resolver([], ["sh"], workdir="/srv", user="nobody")
    o = create_options({"image": "img", "command": [], "env": ["A=mine"]}, resolve)
    assert "A=mine" in o.request.env and "A=image" not in o.request.env
    assert "PATH=/bin" in o.request.env
    assert (o.request.workdir, o.request.user) == ("/srv", "nobody")
    given = create_options({"image": "img", "command": [], "workdir": "/tmp", "user": "0"},
                           resolve)
    assert (given.request.workdir, given.request.user) == ("/tmp", "0")


def test_no_command_anywhere_and_both_sources_are_refused() -> None:
    with pytest.raises(SpecError, match="image has no Cmd or Entrypoint"):
        create_options({"image": "img", "command": []}, _resolver([], []))
    with pytest.raises(SpecError, match="not both"):
        create_options({"image": "img", "rootfs": "/x", "command": ["sh"]}, _resolver([], []))
    with pytest.raises(NotFound, match="no such image: other"):
        create_options({"image": "other", "command": ["sh"]}, _resolver([], []))


@pytest.mark.parametrize(("name", "normal"), [
    ("busybox", "busybox:latest"), ("busybox:1.36", "busybox:1.36"),
    ("localhost:5000/team/app", "localhost:5000/team/app:latest"),
    ("registry.example/app:v1.2", "registry.example/app:v1.2"),
])
def test_image_names(name: str, normal: str) -> None:
    assert normalize_name(name) == normal


@pytest.mark.parametrize("name", ["Busybox", "bad name", "app@sha256:abc", "a:b:c!"])
def test_bad_image_names(name: str) -> None:
    with pytest.raises(SpecError):
        normalize_name(name)
