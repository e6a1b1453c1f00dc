"""The documentation site (``docs/``, ``mkdocs.yml``): it builds with ``mkdocs build --strict`` (a
broken link, a page missing from the navigation or an API reference that names nothing fails), and
every shell command it shows is tested.

A shell block is marked with a class (docs/writing-docs.md):

- ``{.bash .run}``: each command runs on a CPU in seconds; the test runs it and wants exit status 0.
- ``{.bash .parse}``: the command needs a GPU, a cluster, the network or minutes of training, so it
  is parsed, not run: a training command line (``python -m lightning_snn SUB ...``) by the training
  command's own parser (:func:`lightning_snn.cli_check.check_args`: the config files, every option
  and its type); another program of this project (``lightning_snn.*``, ``tune.*``, a script of the
  checkout) by its own argument parser, stopped right after parsing; another project's module must
  exist; anything else is checked by ``bash -n`` (and a script it starts must exist).

A ``bash`` block without one of these classes is an error, so no command goes untested.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```\s*$", re.M | re.S)
SHELL = {"bash", "sh", "shell", "console"}
MODES = ("run", "parse")
# a parsed command may name files that a real run would have made or downloaded first (a checkpoint
# of an earlier fit, a data set, an ImageNet folder): the parser saying that one is absent is a pass
ABSENT = re.compile(r"does not exist|cannot read data set")


@dataclass
class Command:
    page: str
    line: int
    mode: str
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def _classes(info: str) -> tuple[str, set[str]]:
    """Language and classes of a fence's info string: ``bash`` or ``{.bash .run}``."""
    info = info.strip()
    if info.startswith("{"):
        classes = re.findall(r"\.([\w-]+)", info)
        return (classes[0] if classes else ""), set(classes[1:])
    return info.split(" ")[0], set()


def shell_commands(text: str, page: str = "?") -> list[Command]:
    """The commands of the shell blocks of one Markdown page, continuation lines joined and comments
    dropped; a shell block without a mode class raises ValueError naming it."""
    out = []
    for m in FENCE.finditer(text):
        lang, classes = _classes(m["info"])
        line = text[: m.start()].count("\n") + 1
        if lang not in SHELL:
            continue
        modes = [c for c in MODES if c in classes]
        if len(modes) != 1:
            raise ValueError(f"{page}:{line}: a shell block needs one of the classes "
                             f"{['.' + c for c in MODES]}, e.g. ```{{.bash .parse}}")
        body = re.sub(r"\\\n", " ", m["body"])
        for i, raw in enumerate(body.splitlines()):
            cmd = " ".join(shlex.split(raw, comments=True))
            if cmd:
                out.append(Command(page, line + 1 + i, modes[0], raw.split(" #")[0].strip()))
    return out


def all_commands() -> list[Command]:
    return [c for p in sorted(DOCS.rglob("*.md"))
            for c in shell_commands(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]


def _split(text: str) -> list[tuple[dict[str, str], list[str]]]:
    """``A=1 prog args && prog2 args`` -> [(env, argv), ...]; ``python`` is this interpreter."""
    out = []
    for part in re.split(r"\s&&\s", text):
        argv = shlex.split(part, comments=True)
        env = {}
        while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
            k, _, v = argv.pop(0).partition("=")
            env[k] = v
        if argv and (argv[0] in ("python", "python3") or argv[0].endswith("bin/python")):
            argv[0] = sys.executable
        out.append((env, argv))
    return out


class _Parsed(Exception):
    """Raised after a program's command line has been parsed: nothing of the program runs."""


@contextlib.contextmanager
def _stop_after_parsing():
    """The program's outermost ``parse_args`` (or ``parse_known_args``, for a program that passes
    the rest on) parses for real, a bad option is ``SystemExit(2)``, and then the program stops
    (sub-commands parse in nested calls, which return as usual)."""
    known, full = argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.parse_args
    depth = [0]

    def stopping(method):  # type: ignore[no-untyped-def]
        def parse(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
            depth[0] += 1  # parse_args' own parse_known_args returns to it, which refuses left-overs
            try:
                result = method(self, args, namespace)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise _Parsed(result)
            return result
        return parse

    parse_known_args, parse_args = stopping(known), stopping(full)
    argparse.ArgumentParser.parse_known_args = parse_known_args  # type: ignore[method-assign]
    argparse.ArgumentParser.parse_args = parse_args  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = known  # type: ignore[method-assign]
        argparse.ArgumentParser.parse_args = full  # type: ignore[method-assign]


def parse_python(argv: list[str]) -> None:
    """Parse ``python -m MODULE ...`` or ``python SCRIPT ...`` as that program would, in this process."""
    args = argv[1:]
    if args[:2] == ["-m", "lightning_snn"]:
        from lightning_snn.cli_check import check_args
        from lightning_snn.commands import space_separated_list

        from lightning_snn.errors import UsageError

        try:
            # the training parser, after the command line's own list folding (export --verify a b, --T 1 2);
            # a UsageError names what is wrong
            check_args(space_separated_list(space_separated_list(args[2:]), "--T"))
        except SystemExit as e:  # --help
            assert e.code == 0, e
        except UsageError as e:
            if not ABSENT.search(str(e)):
                raise
        return
    if args[0] == "-m" and args[1].split(".")[0] not in ("lightning_snn", "tune"):
        import importlib.util  # another project's program (pip, mkdocs): it exists, its options are its own

        assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]}"
        return
    if args[0] == "-m":
        target, rest, run = args[1], args[2:], lambda: runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        path = ROOT / args[0]
        assert path.is_file(), f"{args[0]} does not exist"
        target, rest, run = args[0], args[1:], lambda: runpy.run_path(str(path), run_name="__main__")
        sys.path.insert(0, str(path.parent))
    saved = sys.argv[:]
    sys.argv = [target, *rest]
    out = io.StringIO()
    try:
        with _stop_after_parsing(), contextlib.redirect_stderr(out), contextlib.redirect_stdout(io.StringIO()):
            run()
    except _Parsed:
        return
    except SystemExit as e:
        if e.code == 0 or ABSENT.search(out.getvalue()):
            return
        raise AssertionError(f"{target} rejected its command line (exit {e.code}): {out.getvalue()[-500:]}") from None
    finally:
        sys.argv = saved
        if args[0] != "-m":
            sys.path.pop(0)
    raise AssertionError(f"{target}: no argument parser was reached")


def check_syntax(argv: list[str], text: str) -> None:
    r = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if argv and argv[0] == "bash" and len(argv) > 1:
        script = ROOT / argv[1]
        assert script.is_file(), f"{argv[1]} does not exist"
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_every_shell_block_is_marked():
    commands = all_commands()  # raises for an unmarked block
    assert {c.mode for c in commands} == set(MODES), "docs/ should show commands of both kinds"


def test_marks_are_read_and_unmarked_blocks_refused():
    page = "```{.bash .run}\npython a.py \\\n  --x 1   # note\n# only a comment\n```\n\n```text\nout\n```\n"
    assert [(c.mode, c.text, c.line) for c in shell_commands(page)] == [("run", "python a.py    --x 1", 2)]
    with pytest.raises(ValueError, match="one of the classes"):
        shell_commands("```bash\nls\n```\n", "p.md")


def test_parse_catches_a_bad_option():
    with pytest.raises(AssertionError, match="rejected its command line"):
        parse_python([sys.executable, "-m", "lightning_snn.suite", "run", "smoke", "--no-such-option"])
    with pytest.raises(Exception, match="no_such"):
        parse_python([sys.executable, "-m", "lightning_snn", "fit", "--config", "configs/fmnist_mlp_bptt.yaml",
                      "--model.no_such", "1"])


PARSED = [c for c in all_commands() if c.mode == "parse"]
RUN = [c for c in all_commands() if c.mode == "run"]


@pytest.mark.parametrize("command", PARSED, ids=str)
def test_shown_command_parses(command, monkeypatch):
    monkeypatch.chdir(ROOT)
    for env, argv in _split(command.text):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        if argv and argv[0] == sys.executable:
            parse_python(argv)
        else:
            check_syntax(argv, shlex.join(argv))


@pytest.mark.parametrize("command", RUN, ids=str)
def test_shown_command_runs(command, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    text = command.text.replace(".venv/bin/python ", f"{sys.executable} ")
    text = re.sub(r"(^|&& )python ", rf"\g<1>{sys.executable} ", text)
    r = subprocess.run(["bash", "-c", text], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def test_python_examples_run():
    """The ``{.python .run}`` blocks, each in a fresh namespace."""
    blocks = [m["body"] for p in sorted(DOCS.rglob("*.md")) for m in FENCE.finditer(p.read_text(encoding="utf-8"))
              if _classes(m["info"]) == ("python", {"run"})]
    assert blocks
    for code in blocks:
        exec(compile(code, "<docs example>", "exec"), {"__name__": "docs_example"})


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: broken links, pages left out of the navigation and API references
    to missing objects fail (mkdocs.yml sets what counts as a warning)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
