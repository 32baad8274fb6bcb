"""`myctr build` end to end, as root and rootless: Containerfiles built into images
whose RUN steps ran in real containers, then run; the cache; whiteouts; docker's
ENTRYPOINT/CMD rules; failures that name their step and tag nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration import harness
from tests.integration.harness import Myctr


@pytest.fixture
def base(myctr: Myctr, rootfs_tar: Path) -> str:
    """The busybox test rootfs (with /probe) imported as image base:1."""
    result = myctr("image", "import", str(rootfs_tar), "base:1")
    assert result.returncode == 0, result.stderr
    rootfs_tar.unlink()
    return "base:1"


def _context(myctr: Myctr, containerfile: str, files: dict[str, str] | None = None,
             name: str = "ctx") -> Path:
    ctx = myctr.state_root / name
    ctx.mkdir(exist_ok=True)
    (ctx / "Containerfile").write_text(textwrap.dedent(containerfile).lstrip())
    for rel, text in (files or {}).items():
        path = ctx / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    harness.chown_tree(ctx, myctr.user)
    return ctx


def _build(myctr: Myctr, ctx: Path, *args: str, ok: bool = True) -> harness.Result:
    result = myctr("build", *args, str(ctx), timeout=180)
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _image_id(result: harness.Result) -> str:
    return result.stdout.strip().splitlines()[-1]


def _cache_hits(result: harness.Result) -> int:
    return result.stdout.count("--> Using cache")


def _images(myctr: Myctr) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(myctr("images", "--format", "json").stdout)  # type: ignore[no-any-return]


class TestBuild:
    def test_multi_stage_build_runs(self, myctr: Myctr, base: str) -> None:
        ctx = _context(myctr, """
            # a compile-ish stage, then only its product is copied
            FROM base:1 AS build
            ARG GREETING=hello
            RUN mkdir -p /out && echo "$GREETING from the build stage" > /out/greeting \\
                && echo compiled > /out/program
            WORKDIR /src
            COPY src/ ./
            RUN cat main.txt >> /out/program

            FROM base:1
            COPY --from=build /out/ /app/
            ENV WHO=world
            WORKDIR /app
            CMD ["sh", "-c", "cat greeting program; echo hi $WHO; pwd"]
            """, {"src/main.txt": "main source\n"})
        built = _build(myctr, ctx, "-t", "app:1", "--build-arg", "GREETING=howdy")
        assert "STEP 1/11: FROM base:1 AS build" in built.stdout
        image_id = _image_id(built)
        run = myctr("run", "--rm", "app:1")
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == ["howdy from the build stage", "compiled",
                                           "main source", "hi world", "/app"]
        [image] = [i for i in _images(myctr) if "app:1" in i["tags"]]
        assert image["id"].endswith(image_id)
        inspect = json.loads(myctr("image", "inspect", "app:1").stdout)[0]
        config = inspect["config"]["config"]
        assert config["WorkingDir"] == "/app" and "WHO=world" in config["Env"]
        # the final image has the base's layer and one COPY layer; history has every step
        assert inspect["layers"] == 2
        history = json.loads(myctr("history", "--format", "json", "app:1").stdout)
        assert "COPY --from=build /out/ /app/" in history[3]["created_by"]
        assert [bool(h["layer"]) for h in history] == [False, False, False, True, True]
        # build steps ran in containers that are gone now
        assert json.loads(myctr("ps", "-a", "--external", "--format", "json").stdout) == []

    def test_whiteout_of_a_deleted_file(self, myctr: Myctr, base: str) -> None:
        ctx = _context(myctr, """
            FROM base:1
            RUN mkdir -p /d/sub /t && echo x > /d/sub/f && echo y > /d/keep && echo old > /t/old
            RUN rm /bin/vi && rm -r /d/sub && rm -r /t && mkdir /t && echo new > /t/only
            """)
        _build(myctr, ctx, "-t", "wh:1")
        run = myctr("run", "--rm", "wh:1", "sh", "-c",
                    "ls /bin/vi /d/sub 2>&1; ls /d; ls /t; cat /d/keep")
        assert "/bin/vi: No such file" in run.stdout
        assert "/d/sub: No such file" in run.stdout
        assert run.stdout.splitlines()[-3:] == ["keep", "only", "y"], run.stdout
        assert myctr("run", "--rm", "base:1", "ls", "/bin/vi").returncode == 0

    def test_cache_hits_and_misses(self, myctr: Myctr, base: str) -> None:
        ctx = _context(myctr, """
            FROM base:1
            RUN echo one > /one
            COPY a.txt /a.txt
            RUN cat /a.txt > /copy
            COPY . /ctx/
            """, {"a.txt": "A\n", "b.txt": "B\n", "ignored.log": "x\n",
                  ".containerignore": "*.log\n"})
        first = _build(myctr, ctx, "-t", "cache:1")
        assert _cache_hits(first) == 0
        first_id = _image_id(first)
        again = _build(myctr, ctx, "-t", "cache:1")
        assert _cache_hits(again) == 4 and _image_id(again) == first_id
        # an mtime-only change and a change to an ignored file do not bust the cache
        os.utime(ctx / "a.txt", (1, 1))
        (ctx / "ignored.log").write_text("changed\n")
        touched = _build(myctr, ctx, "-t", "cache:1")
        assert _cache_hits(touched) == 4 and _image_id(touched) == first_id
        # a content change misses from that step on, the steps before it hit
        (ctx / "a.txt").write_text("A2\n")
        changed = _build(myctr, ctx, "-t", "cache:1")
        assert _cache_hits(changed) == 1, changed.stdout
        assert _image_id(changed) != first_id
        run = myctr("run", "--rm", "cache:1", "sh", "-c", "cat /copy; ls /ctx")
        assert run.stdout.split() == ["A2", "Containerfile", "a.txt", "b.txt"]
        # --no-cache runs everything
        assert _cache_hits(_build(myctr, ctx, "-t", "cache:1", "--no-cache")) == 0

    @pytest.mark.parametrize(("lines", "args", "expected"), [
        ('ENTRYPOINT ["echo", "e"]\nCMD ["c"]', (), "e c"),
        ('ENTRYPOINT ["echo", "e"]\nCMD ["c"]', ("x",), "e x"),
        ("ENTRYPOINT echo shell form\nCMD [\"c\"]", ("x",), "shell form"),
        ('CMD ["echo", "cmd"]', (), "cmd"),
        ('CMD ["echo", "cmd"]', ("echo", "replaced"), "replaced"),
        ("CMD echo $HOME shell", (), "/root shell"),
        ('ENTRYPOINT ["echo"]', (), ""),
    ])
    def test_entrypoint_and_cmd(self, myctr: Myctr, base: str, lines: str,
                                args: tuple[str, ...], expected: str) -> None:
        ctx = _context(myctr, "FROM base:1\nENV HOME=/root\n" + lines + "\n")
        _build(myctr, ctx, "-t", "ep:1")
        run = myctr("run", "--rm", "ep:1", *args)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == expected

    def test_image_config_applies(self, myctr: Myctr, base: str) -> None:
        """STOPSIGNAL is what stop sends; --entrypoint replaces the image's (and its
        Cmd); metadata-only instructions land in the config."""
        ctx = _context(myctr, """
            FROM base:1
            STOPSIGNAL SIGUSR1
            LABEL org.example.role="test image" version=1
            EXPOSE 8080 53/udp
            VOLUME /data
            HEALTHCHECK --interval=5s --retries=2 CMD true
            ENTRYPOINT ["sh", "-c"]
            CMD ["trap 'echo got usr1; exit 0' USR1; echo up; while true; do sleep 0.1; done"]
            """)
        _build(myctr, ctx, "-t", "cfg:1")
        config = json.loads(myctr("image", "inspect", "cfg:1").stdout)[0]["config"]["config"]
        assert config["StopSignal"] == "SIGUSR1"
        assert config["Labels"] == {"org.example.role": "test image", "version": "1"}
        assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
        assert config["Volumes"] == {"/data": {}}
        assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "true"],
                                         "Interval": 5_000_000_000, "Retries": 2}
        assert myctr("run", "-d", "--name", "sig", "cfg:1").returncode == 0
        deadline = time.monotonic() + 20
        while "up" not in myctr("logs", "sig").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert myctr("stop", "-t", "10", "sig").returncode == 0
        assert "got usr1" in myctr("logs", "sig").stdout
        assert myctr("wait", "sig").stdout.strip() == "0"
        assert myctr("rm", "sig").returncode == 0
        run = myctr("run", "--rm", "--entrypoint", "echo", "cfg:1", "replaced")
        assert run.stdout == "replaced\n", run.stderr

    def test_entrypoint_resets_the_base_cmd(self, myctr: Myctr, base: str) -> None:
        first = _context(myctr, 'FROM base:1\nCMD ["from-base"]\n', name="first")
        _build(myctr, first, "-t", "withcmd:1")
        second = _context(myctr, 'FROM withcmd:1\nENTRYPOINT ["echo", "ep"]\n', name="second")
        _build(myctr, second, "-t", "reset:1")
        assert myctr("run", "--rm", "reset:1").stdout.strip() == "ep"

    def test_copy_add_forms(self, myctr: Myctr, base: str) -> None:
        ctx = _context(myctr, """
            FROM base:1
            COPY --chown=1000:1001 files/*.txt /dest/
            COPY files/dir /tree
            COPY ["files/a.txt", "/exec form.txt"]
            ADD archive.tar.gz /unpacked/
            ADD files/a.txt /added.txt
            COPY --chmod=700 files/a.txt /mode.txt
            """, {"files/a.txt": "a\n", "files/b.txt": "b\n", "files/c.md": "c\n",
                  "files/dir/sub/deep.txt": "deep\n"})
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            data = b"inside the archive\n"
            info = tarfile.TarInfo("pkg/readme")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        (ctx / "archive.tar.gz").write_bytes(buffer.getvalue())
        harness.chown_tree(ctx, myctr.user)
        _build(myctr, ctx, "-t", "copies:1")
        script = ("ls /dest; stat -c '%u:%g' /dest/a.txt; cat /tree/sub/deep.txt "
                  "'/exec form.txt' /unpacked/pkg/readme /added.txt; stat -c '%a' /mode.txt")
        run = myctr("run", "--rm", "copies:1", "sh", "-c", script)
        assert run.stdout.splitlines() == ["a.txt", "b.txt", "1000:1001", "deep", "a",
                                           "inside the archive", "a", "700"], run.stderr

    def test_target_and_args(self, myctr: Myctr, base: str) -> None:
        ctx = _context(myctr, """
            ARG FLAVOR=plain
            FROM base:1 AS first
            ARG FLAVOR
            RUN echo "first $FLAVOR" > /which
            FROM first AS second
            RUN echo second > /which
            """)
        _build(myctr, ctx, "-t", "target:1", "--target", "first", "--build-arg", "FLAVOR=spicy")
        assert myctr("run", "--rm", "target:1", "cat", "/which").stdout == "first spicy\n"
        _build(myctr, ctx, "-t", "target:2")
        assert myctr("run", "--rm", "target:2", "cat", "/which").stdout == "second\n"

    def test_failing_step_tags_nothing(self, myctr: Myctr, base: str) -> None:
        ctx = _context(myctr, """
            FROM base:1
            RUN echo before
            RUN echo output of the failing step; exit 3
            RUN echo never
            """)
        result = _build(myctr, ctx, "-t", "broken:1", ok=False)
        assert result.returncode == 1
        assert "output of the failing step" in result.stdout
        [line] = result.stderr.strip().splitlines()
        assert "Containerfile:3" in line and "exit status 3" in line, line
        assert not any("broken:1" in i["tags"] for i in _images(myctr))
        assert json.loads(myctr("ps", "-a", "--external", "--format", "json").stdout) == []

    @pytest.mark.parametrize(("text", "message"), [
        ("FROM base:1\nFROOB x\n", "Containerfile:2: unknown instruction: FROOB"),
        ("RUN true\n", "Containerfile:1: RUN before FROM"),
        ("FROM base:1\nSHELL sh -c\n", "Containerfile:2: SHELL requires"),
        ("FROM nosuch:1\n", "Containerfile:1: FROM nosuch:1: no such image"),
        ("FROM base:1\nCOPY missing.txt /\n", "missing.txt: no such file"),
    ])
    def test_bad_containerfiles(self, myctr: Myctr, base: str, text: str,
                                message: str) -> None:
        ctx = _context(myctr, text)
        result = _build(myctr, ctx, "-t", "bad:1", ok=False)
        assert result.returncode != 0
        [line] = result.stderr.strip().splitlines()
        assert message in line, line
        assert not any("bad:1" in i["tags"] for i in _images(myctr))

    def test_prune_removes_the_build_cache(self, myctr: Myctr, base: str) -> None:
        ctx = _context(myctr, "FROM base:1\nRUN echo x > /x\n")
        _build(myctr, ctx, "-t", "pruned:1")
        assert myctr("image", "rm", "pruned:1").returncode == 0
        assert myctr("image", "prune").returncode == 0
        assert [i["tags"] for i in _images(myctr)] == [["base:1"]]
        assert json.loads(myctr("images", "-a", "--format", "json").stdout)[0]["tags"] == \
            ["base:1"]
        assert len(json.loads(myctr("images", "-a", "--format", "json").stdout)) == 1


def test_crash_mid_build_leaves_no_image(myctr: Myctr, base: str) -> None:
    """The supervisor killed (kill -9) while a RUN step runs: the next supervisor
    removes the step's container, no named image appears, and image prune leaves only
    the base image's files."""
    import signal

    before = _store_files(myctr)
    ctx = _context(myctr, """
        FROM base:1
        COPY a.txt /a.txt
        RUN echo started; sleep 60
        """, {"a.txt": "a\n"})
    build = subprocess.Popen(myctr.command("build", "-t", "crashed:1", str(ctx)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not json.loads(myctr("ps", "--external", "--format", "json").stdout):
        assert time.monotonic() < deadline and build.poll() is None, build.communicate()
        time.sleep(0.05)
    pid = harness.supervisor_call(myctr.state_root, "ping")["result"]["pid"]  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)
    _, stderr = build.communicate(timeout=30)
    assert build.returncode == 125 and len(stderr.strip().splitlines()) == 1, stderr
    assert json.loads(myctr("ps", "-a", "--external", "--format", "json").stdout) == []
    assert [i["tags"] for i in _images(myctr)] == [["base:1"]]
    assert myctr("image", "prune").returncode == 0
    assert _store_files(myctr) == before


def _store_files(myctr: Myctr) -> list[str]:
    root = myctr.state_root / "data" / "images"
    return sorted(os.listdir(root / "blobs" / "sha256")) + sorted(os.listdir(root / "layers"))
