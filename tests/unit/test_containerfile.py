"""Containerfile parsing, variable expansion and .containerignore matching, as docker's."""

from __future__ import annotations

import re

import pytest

from runtime.build.containerfile import (
    ContainerfileError,
    expand,
    key_values,
    parse,
    split_words,
)
from runtime.build.ignore import Ignore
from runtime.errors import SpecError


def test_stages_flags_and_forms() -> None:
    cf = parse(
        "ARG BASE=busybox\n"
        "FROM ${BASE} AS Build\n"
        "RUN echo a && \\\n"
        "    # a comment inside the continuation is dropped\n"
        "\n"
        "    echo b\n"
        "COPY --from=x --chown=1:2 a b /c/\n"
        'CMD ["sh", "-c", "x"]\n'
        "from scratch\n"
        "copy --from=build /x /y\n")
    assert [a.args for a in cf.global_args] == ["BASE=busybox"]
    build, final = cf.stages
    assert (build.base, build.name, build.line) == ("${BASE}", "build", 2)
    run, copy, cmd = build.instructions
    assert run.args == "echo a && echo b" and run.line == 3 and run.json is None
    assert copy.flags == (("from", "x"), ("chown", "1:2")) and copy.args == "a b /c/"
    assert cmd.json == ("sh", "-c", "x")
    assert final.base == "scratch" and final.instructions[0].keyword == "COPY"
    assert cf.stage("build") is build and cf.stage("1") is final


def test_escape_directive_and_directives_only_at_the_top() -> None:
    cf = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM x\nRUN dir c:\\ `\n  && echo\n")
    assert cf.escape == "`"
    assert cf.stages[0].instructions[0].args == "dir c:\\ && echo"
    late = parse("FROM x\n# escape=`\nRUN a `\n")  # a comment now: ` is no escape
    assert late.escape == "\\" and late.stages[0].instructions[0].args == "a `"


def test_json_that_is_not_a_string_array_is_shell_form() -> None:
    cf = parse('FROM x\nCMD [1, 2]\nRUN ["unterminated\n')
    assert [i.json for i in cf.stages[0].instructions] == [None, None]


@pytest.mark.parametrize(("text", "message"), [
    ("FROM x\nFROOB y\n", "Containerfile:2: unknown instruction: FROOB"),
    ("RUN x\n", "Containerfile:1: RUN before FROM"),
    ("# nothing\n", "no FROM"),
    ("FROM x\nSHELL sh\n", "Containerfile:2: SHELL requires"),
    ("FROM x AS a\nFROM y AS a\n", "duplicate stage name"),
    ("FROM x y\n", "FROM takes IMAGE [AS NAME]"),
    ("FROM x\nCOPY\n", "COPY requires at least one argument"),
    ("# escape=x\nFROM x\n", "invalid escape character"),
])
def test_syntax_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ContainerfileError, match=re.escape(message)):
        parse(text)


def test_expansion() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert expand("$A ${A} ${B:-def} ${A:+alt} ${EMPTY:-e} ${B:+x}.", env) == "1 1 def alt e ."
    assert expand("\\$A costs $$", env) == "$A costs $$"
    assert expand("${A:-${B:-deep}}", {}) == "deep"
    with pytest.raises(SpecError):
        expand("${A", env)


def test_words_and_key_values() -> None:
    assert split_words('a "b c" \'d e\' f\\ g') == ["a", "b c", "d e", "f g"]
    ins = parse('FROM x\nENV A=1 B="two words" C=$HOME D=\'$HOME\' E=\\$HOME\n'
                ).stages[0].instructions[0]
    assert key_values(ins, {"HOME": "/root"}) == [
        ("A", "1"), ("B", "two words"), ("C", "/root"), ("D", "$HOME"), ("E", "$HOME")]
    legacy = parse("FROM x\nENV KEY value with spaces\n").stages[0].instructions[0]
    assert key_values(legacy, {}) == [("KEY", "value with spaces")]


def test_ignore_patterns() -> None:
    ignore = Ignore(["# comment", "*.log", "build", "docs/**/*.md", "!docs/keep/*.md",
                     "/abs.txt", "**/tmp"])
    assert ignore("x.log") and not ignore("sub/x.log")  # * stays in one component
    assert ignore("build") and ignore("build/deep/file")  # a dir excludes its contents
    assert ignore("docs/a.md") and ignore("docs/a/b/c.md")
    assert not ignore("docs/keep/a.md")  # the exception comes last and wins
    assert ignore("abs.txt") and ignore("tmp") and ignore("a/b/tmp/x")
    assert not ignore("src/main.c")
    assert not Ignore([])
