"""The image bench's pure parts: Containerfile step counts, cache-hit counting in both
tools' output, the store flags buildah shares with podman, a docker-archive's layers, the
context, the rows and the ratios line, argument parsing."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from bench.image_bench import (
    CACHED,
    COLD,
    CONTAINERFILE,
    CONTEXT_FILES,
    FULL,
    QUICK,
    all_ratios,
    archive_diff_ids,
    cache_hits,
    cacheable_steps,
    check_cache_hits,
    context_files,
    format_ratios,
    layer_steps,
    logical_lines,
    parse_args,
    store_flags,
    timed_rows,
    write_context,
)
from bench.start_latency import BenchError, podman_tool
from bench.supervisor_bench import Row, Section, split_podman_argv

MYCTR_CACHED = """\
STEP 1/4: FROM base
STEP 2/4: RUN echo hi > /x
--> Using cache 246bc2eb0049358e57b7064a3731f10fea37d5b46e3272efeb667a363714f844
STEP 3/4: COPY app /app
--> Using cache a1e5b475ca1cc3857c4c0f7ab75fc65b580bf70dbfdef71ea31df14765613531
STEP 4/4: CMD ["/bin/true"]
COMMIT img:latest
Successfully tagged img:latest
"""
MYCTR_COLD = """\
STEP 1/4: FROM base
STEP 2/4: RUN echo hi > /x
--> 246bc2eb0049
STEP 3/4: COPY app /app
--> a1e5b475ca1c
STEP 4/4: CMD ["/bin/true"]
COMMIT img:latest
"""
BUILDAH_CACHED = """\
[1/2] STEP 1/2: FROM base AS builder
[1/2] STEP 2/2: RUN echo hi > /x
--> Using cache 78f29b31ae87ae1c0b5ca8669ea09aeb5eb237b40274cd26ace247d7bbc14b54
--> 78f29b31ae8
[2/2] STEP 1/2: FROM base
[2/2] STEP 2/2: CMD ["/bin/true"]
--> Using cache 52b5fae5e44bc954a8bd414107d7489ee9b54a1e5ff6996910d155abd426df7e
[2/2] COMMIT img
--> 52b5fae5e44
"""


class TestContainerfile:
    def test_continuations_comments_and_blanks(self) -> None:
        text = "# a comment\nFROM x\n\nRUN a && \\\n    b\nCMD [\"c\"]\n"
        assert logical_lines(text) == ["FROM x", "RUN a &&  b", 'CMD ["c"]']

    def test_a_trailing_continuation_is_kept(self) -> None:
        assert logical_lines("FROM x\nRUN a \\") == ["FROM x", "RUN a"]

    def test_layer_steps_count_run_copy_add_in_any_case(self) -> None:
        text = "FROM x\nrun a\nCOPY b /b\nADD c.tar /\nENV A=1\nCMD [\"d\"]\nLABEL x=y\n"
        assert layer_steps(text) == 3

    def test_buildah_caches_every_instruction_but_from(self) -> None:
        text = "FROM x AS a\nRUN a\nFROM x\nENV A=1\nCOPY --from=a /a /a\nCMD [\"d\"]\n"
        assert cacheable_steps(text) == 4

    def test_the_bench_containerfile(self) -> None:
        """4 RUN and 3 COPY make 7 layers; buildah also caches ENV and CMD."""
        assert layer_steps(CONTAINERFILE) == 7
        assert cacheable_steps(CONTAINERFILE) == 9
        assert "COPY --from=builder" in CONTAINERFILE


class TestCacheHits:
    def test_both_tools_outputs(self) -> None:
        assert cache_hits(MYCTR_CACHED) == 2
        assert cache_hits(MYCTR_COLD) == 0
        assert cache_hits(BUILDAH_CACHED) == 2

    def test_check_passes_on_the_expected_count(self) -> None:
        check_cache_hits("myctr", COLD, MYCTR_COLD, 0)
        check_cache_hits("myctr", CACHED, MYCTR_CACHED, 2)

    def test_a_cold_build_that_hit_the_cache_fails(self) -> None:
        with pytest.raises(BenchError, match=r"myctr: cold build.*2 cache hit"):
            check_cache_hits("myctr", COLD, MYCTR_CACHED, 0)

    def test_a_partly_cached_rebuild_fails(self) -> None:
        with pytest.raises(BenchError, match=r"1 cache hit.*expected 2"):
            check_cache_hits("buildah", CACHED, MYCTR_CACHED.replace(
                "--> Using cache a1e5", "--> a1e5"), 2)


class TestStoreFlags:
    def test_taken_from_start_latencys_podman_command_line(self, tmp_path: Path) -> None:
        """buildah gets exactly the store podman uses: same root, runroot, driver."""
        argv = podman_tool("podman", tmp_path, tmp_path / "rootfs", "/cg").argv("x")
        global_flags, _ = split_podman_argv(argv)
        assert store_flags(global_flags) == [
            "--root", str(tmp_path / "root"), "--runroot", str(tmp_path / "runroot"),
            "--storage-driver", "overlay"]

    def test_a_missing_flag_is_an_error(self) -> None:
        with pytest.raises(BenchError, match="--runroot, --storage-driver"):
            store_flags(["podman", "--root", "/r"])


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class TestArchive:
    def test_diff_ids_from_the_manifest_config(self, tmp_path: Path) -> None:
        archive = tmp_path / "a.tar"
        config = {"rootfs": {"type": "layers", "diff_ids": ["sha256:aa", "sha256:bb"]}}
        with tarfile.open(archive, "w") as tar:
            add(tar, "cfg.json", json.dumps(config).encode())
            add(tar, "manifest.json", json.dumps(
                [{"Config": "cfg.json", "RepoTags": ["x:latest"],
                  "Layers": ["aa.tar", "bb.tar"]}]).encode())
        assert archive_diff_ids(archive) == ["sha256:aa", "sha256:bb"]

    def test_a_directory_member_is_an_error(self, tmp_path: Path) -> None:
        archive = tmp_path / "a.tar"
        with tarfile.open(archive, "w") as tar:
            info = tarfile.TarInfo("manifest.json")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        with pytest.raises(BenchError, match=r"manifest\.json is not a file"):
            archive_diff_ids(archive)


class TestContext:
    def test_same_bytes_every_time(self) -> None:
        """The build cache keys on content: a second bench run must build the same."""
        first, second = context_files(), context_files()
        assert first == second and len(first) == CONTEXT_FILES
        assert len(set(first.values())) == CONTEXT_FILES

    def test_written_with_the_containerfile(self, tmp_path: Path) -> None:
        files = {"app/a": b"1", "app/sub/b": b"2"}
        write_context(tmp_path / "ctx", "FROM x\n", files)
        assert (tmp_path / "ctx" / "Containerfile").read_text() == "FROM x\n"
        assert (tmp_path / "ctx" / "app" / "sub" / "b").read_bytes() == b"2"


class TestReport:
    def test_rows_are_medians_in_ms_and_skip_empty_metrics(self) -> None:
        rows = timed_rows("myctr", {COLD: [0.3, 0.1, 0.2], CACHED: []})
        assert len(rows) == 1
        assert rows[0].metric == COLD and rows[0].value == pytest.approx(200)
        assert rows[0].samples == pytest.approx((300, 100, 200))
        assert "n=3" in rows[0].detail

    def test_ratios_line_names_each_section(self) -> None:
        build = Section("build", "t", "h", (Row("myctr", COLD, 1.0, "ms"),),
                        (("cold: myctr/buildah", 0.25), ("cached: myctr/buildah", None)))
        load = Section("load", "t", "h", (), (("myctr/podman", 0.5),))
        ratios = all_ratios([build, load])
        assert ratios == {"build cold: myctr/buildah": 0.25,
                          "build cached: myctr/buildah": None, "load myctr/podman": 0.5}
        assert format_ratios(ratios) == ("ratios: build cold: myctr/buildah 0.25x  "
                                         "build cached: myctr/buildah n/a  "
                                         "load myctr/podman 0.50x")


class TestArgs:
    def test_defaults(self) -> None:
        args = parse_args([])
        assert args.sizes == FULL and args.only == ["build", "load", "start"]
        assert FULL.archive_mib == 100

    def test_quick_and_overrides(self) -> None:
        args = parse_args(["--quick", "--runs", "3", "--only", "load"])
        assert args.sizes == QUICK._replace(runs=3) and args.only == ["load"]

    @pytest.mark.parametrize("argv", [["--runs", "0"], ["--warmup", "-1"],
                                      ["--archive-mib", "0"], ["--only", "nope"]])
    def test_bad_values(self, argv: list[str]) -> None:
        with pytest.raises(SystemExit):
            parse_args(argv)
