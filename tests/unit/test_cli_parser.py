"""The command line's parser: a command line that names its command builds only that
command's parser, and parses to exactly what the whole parser gives."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from aufs.cli import parser


def _whole() -> argparse.ArgumentParser:
    built = parser._build(None)
    assert built is not None
    return built


_ALL = _whole()


def _commands(p: argparse.ArgumentParser) -> set[str]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize(("argv", "named"), [
    (["diff", "x"], "diff"),
    (["--root", "/s", "diff", "x"], "diff"),
    (["--root=/s", "--engine", "overlay", "--json", "--debug", "ls"], "ls"),
    (["--engine=aufs", "changes", "x", "--json"], "changes"),
    (["--root", "diff", "ls"], "ls"),  # "diff" is --root's value here
    ([], None),
    (["--root", "/s"], None),
    (["--help"], None),
    (["-h", "diff"], None),
    (["--version"], None),
    (["--ro", "/s", "ls"], None),  # an abbreviation: argparse's business
    (["--", "ls"], None),
    (["nosuch"], "nosuch"),
])
def test_the_command_word(argv: list[str], named: str | None) -> None:
    assert parser.command_named(argv) == named


def test_a_named_command_builds_only_its_own_parser() -> None:
    only = parser._build("diff")
    assert only is not None
    assert _commands(only) == {"diff"}
    assert len(_commands(_ALL)) > 15
    assert parser._build("nosuch") is None  # then build_parser builds them all
    assert _commands(parser.build_parser(["nosuch"])) == _commands(_ALL)


_LINES = [
    ["status"], ["--json", "status"], ["ls"], ["ls", "--json"], ["tree"],
    ["create", "a", "--parent", "b"], ["mount", "a"], ["umount", "a"], ["rm", "a"],
    ["--root", "/s", "diff", "a", "-o", "f", "--compress", "gzip", "--parent", "p"],
    ["apply", "a", "--parent", "p", "f.tar"], ["apply", "a"], ["changes", "a", "--json"],
    ["size", "a"], ["cleanup"], ["check", "--repair"], ["migrate", "/g"],
    ["convert", "--to", "aufs"], ["import", "x.tar", "--name", "n"],
    ["export", "a", "-o", "o.tar", "--format", "docker-archive", "--tag", "r:t"],
    ["pull", "localhost:5000/r:t", "--platform", "linux/amd64", "--insecure"],
    ["push", "a", "localhost:5000/r:t"],
    ["docker-plugin", "--name", "p", "--root", "/s", "-v"],
    ["docker-adopt", "--data-root", "/d", "--name", "p", "--undo"],
]


def test_every_command_is_among_the_lines_below() -> None:
    assert {w for line in _LINES for w in line} >= _commands(_ALL)


@pytest.mark.parametrize("argv", _LINES, ids=" ".join)
def test_parses_as_the_whole_parser_does(argv: list[str]) -> None:
    assert parser.build_parser(argv).parse_args(argv) == _ALL.parse_args(argv)
    assert _commands(parser.build_parser(argv)) == {parser.command_named(argv)}


@pytest.mark.parametrize("argv", [["diff"], ["diff", "a", "--compress", "rar"],
                                  ["create"], ["convert"], ["ls", "extra"]])
def test_mistakes_are_told_as_the_whole_parser_tells_them(argv: list[str]) -> None:
    def complaint(p: argparse.ArgumentParser) -> tuple[object, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
            p.parse_args(argv)
        return exc.value.code, err.getvalue()

    code, line = complaint(parser.build_parser(argv))
    assert code == 2 and line.startswith("aufs")
    assert (code, line) == complaint(_ALL)
