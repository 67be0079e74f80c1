"""The shell command blocks of README.md and docs/*.md use only commands and flags that exist.

Every ``jaxclip-fs <command> ...`` line of a ```bash block parses with the real CLI parser,
naming each ``--flag`` exactly (no abbreviation argparse would guess); every ``python -m
benchmarks.X`` names a module that exists and flags its parser declares. Every ``--flag``
named anywhere in the prose is one of those (or another program's, listed below); the
``--help`` examples parse too, links resolve, and the README stays short and lists every
method. The cheap commands (``methods``, ``datasets``, ``--help``) run for real here; the
offline ones (digits, random weights: extract, validate, evaluate, run, train-imo, embed,
report) run in order in a temporary directory in the slow tier.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import glob
import importlib.util
import io
import os
import re
import shlex

import pytest

from jaxclip_fs import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
SHELL = ("bash", "sh", "shell", "console")
#: Where one shell command ends and the next begins.
SEPARATORS = {"&&", "||", ";", "|"}
FLAG = r"(?<![\w-])--[a-z][a-z0-9_-]*"
#: Flags of other programs the docs name: pytest's, gcloud's, and the official codes' (their
#: command lines, quoted where docs/methods.md and docs/towers.md say what they ran).
FOREIGN_FLAGS = {
    "--durations", "--worker", "--command",  # pytest, gcloud
    "--modality", "--classifier_head", "--classifier_init", "--hyperparams",  # cross_modal
    "--hp-selection",  # ProKeR
    "--r", "--alpha", "--dropout_rate", "--params", "--position", "--encoder", "--lr",
    "--n_iters",  # CLIP-LoRA
}


def _text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _blocks(path: str, languages=SHELL) -> list[str]:
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", _text(path), re.S | re.M)
            if lang in languages]


def _commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments dropped,
    split at ``&&`` / ``;`` / pipes; a quoted ``jaxclip-fs ...`` argument (``ssh --command
    "..."``) counts as a command of its own."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for token in tokens + [";"]:
            if token in SEPARATORS:
                if current:
                    found.append(current)
                current = []
                continue
            if token.startswith("jaxclip-fs ") and current:  # a command inside quotes
                found.extend(_commands(token))
            current.append(token)
    return found


def _all_commands() -> list[tuple[str, list[str]]]:
    return [(os.path.relpath(path, ROOT), argv) for path in DOCS for block in _blocks(path)
            for argv in _commands(block)]


def _jaxclip(argv: list[str]) -> list[str] | None:
    """The arguments of a ``jaxclip-fs`` command (None for any other command)."""
    return argv[1:] if argv and argv[0] == "jaxclip-fs" else None


def _benchmark(argv: list[str]) -> str | None:
    """``X`` of ``python -m benchmarks.X`` (None for any other command)."""
    if len(argv) >= 3 and argv[0] in ("python", "python3") and argv[1] == "-m" \
            and argv[2].startswith("benchmarks."):
        return argv[2]
    return None


def _subparsers():
    parser = cli.build_parser()
    return parser, parser._subparsers._group_actions[0].choices


def _flags(argv: list[str]) -> list[str]:
    return [token.split("=", 1)[0] for token in argv if re.match(r"--[a-z]", token)]


@functools.lru_cache(maxsize=None)
def _benchmark_flags(module: str) -> frozenset[str]:
    """The flags MODULE's parser declares (its ``add_argument("--x", ...)`` calls; read from
    the source, as running ``--help`` would import torch for some benchmarks)."""
    spec = importlib.util.find_spec(module)
    files = ([os.path.join(folder, name) for folder in spec.submodule_search_locations
              for name in os.listdir(folder) if name.endswith(".py")]
             if spec.submodule_search_locations else [spec.origin])
    flags = set()
    for path in files:
        for node in ast.walk(ast.parse(_text(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                flags |= {arg.value for arg in node.args if isinstance(arg, ast.Constant)
                          and isinstance(arg.value, str) and arg.value.startswith("--")}
    return frozenset(flags)


def _cli_flags() -> set[str]:
    parser, commands = _subparsers()
    flags = set(parser._option_string_actions)
    for sub in commands.values():
        flags |= set(sub._option_string_actions)
    return flags


def test_the_docs_have_command_blocks():
    commands = _all_commands()
    # the README starts with the two install commands; the docs hold the rest
    assert _blocks(DOCS[0])[0].count("pip install") == 2
    assert sum(_jaxclip(argv) is not None for _, argv in commands) >= 15
    assert any(_benchmark(argv) for _, argv in commands)


def test_every_jaxclip_fs_command_in_the_docs_parses_with_exact_flags():
    parser, commands = _subparsers()
    problems = []
    for doc, argv in _all_commands():
        args = _jaxclip(argv)
        if args is None:
            continue
        line = f"{doc}: {shlex.join(argv)}"
        if not args or args[0] not in commands:
            problems.append(f"{line}: no such command")
            continue
        options = commands[args[0]]._option_string_actions
        problems += [f"{line}: {flag} is not a flag of {args[0]}" for flag in _flags(args[1:])
                     if flag not in options]
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                parser.parse_args(args)
            except SystemExit as exc:
                if exc.code != 0:
                    problems.append(f"{line}: {stderr.getvalue().strip().splitlines()[-1]}")
    assert not problems, "\n".join(problems)


def test_the_examples_of_every_commands_help_parse_with_exact_flags():
    """``jaxclip-fs CMD --help`` ends with examples: they are docs too."""
    parser, commands = _subparsers()
    problems, seen = [], 0
    for name, sub in commands.items():
        examples = re.split(r"^examples?:\n", sub.description or "", flags=re.M)
        assert len(examples) == 2, f"jaxclip-fs {name} --help has no examples"
        for argv in _commands(examples[1]):
            args, seen = _jaxclip(argv), seen + 1
            assert args and args[0] == name, f"{name}'s example runs {argv[:2]}"
            problems += [f"{name} --help: {shlex.join(argv)}: {flag} is not a flag of {name}"
                         for flag in _flags(args[1:]) if flag not in sub._option_string_actions]
    assert not problems, "\n".join(problems)
    assert seen >= len(commands)


def test_every_benchmark_command_in_the_docs_exists_with_its_flags():
    problems = []
    for doc, argv in _all_commands():
        module = _benchmark(argv)
        if module is None:
            continue
        if importlib.util.find_spec(module) is None:
            problems.append(f"{doc}: {shlex.join(argv)}: no module {module}")
            continue
        problems += [f"{doc}: {shlex.join(argv)}: {flag} is not a flag of {module}"
                     for flag in _flags(argv[3:]) if flag not in _benchmark_flags(module)]
    assert not problems, "\n".join(problems)


def _mentioned_modules() -> set[str]:
    """The benchmark modules the docs' text names (``python -m benchmarks.X``,
    ``benchmarks/X.py``, ``bench_X``)."""
    text = " ".join(_text(path) for path in DOCS)
    modules = set(re.findall(r"python -m\s+(benchmarks(?:\.\w+)+)(?![\w<*])", text))
    modules |= {f"benchmarks.{name}" for name in re.findall(r"benchmarks/(\w+)\.py", text)}
    modules |= {f"benchmarks.{name}" for name in re.findall(r"(?<![\w.])(bench_\w+)", text)
                if os.path.exists(os.path.join(ROOT, "benchmarks", f"{name}.py"))}
    return modules


def test_every_benchmark_module_the_docs_name_exists():
    modules = _mentioned_modules()
    assert "benchmarks.reproduce" in modules and "benchmarks.bench_search" in modules
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, f"the docs name modules that do not exist: {missing}"


def test_every_flag_the_prose_names_exists():
    """A ``--flag`` anywhere in the docs' text (outside Python blocks) is one of ours."""
    known = _cli_flags() | FOREIGN_FLAGS
    for module in _mentioned_modules():
        if importlib.util.find_spec(module) is not None:
            known |= _benchmark_flags(module)
    problems = []
    for path in DOCS:
        text = re.sub(r"^```python\n.*?^```", "", _text(path), flags=re.S | re.M)
        for number, line in enumerate(text.splitlines(), 1):
            for flag in re.findall(FLAG, line):
                if flag not in known:
                    problems.append(f"{os.path.relpath(path, ROOT)}:{number}: {flag}")
    assert not problems, "flags that no command has:\n" + "\n".join(problems)


def test_detects_a_flag_that_does_not_exist():
    """The checks above fail on a made-up flag (so they can fail at all)."""
    block = "jaxclip-fs run --dataset digits --select-on-test --out x \\\n    --shots 1  # c\n"
    (argv,) = _commands(block)
    assert argv[-2:] == ["--shots", "1"]
    _, commands = _subparsers()
    assert "--select-on-test" not in commands["run"]._option_string_actions
    assert "--select-on-test" not in _cli_flags()
    quoted = _commands('ssh host --command "jaxclip-fs run --no-such-flag --out x" && ls\n')
    assert ["jaxclip-fs", "run", "--no-such-flag", "--out", "x"] in quoted


# -- the cheap commands, for real ------------------------------------------------------------

def _cheap(args: list[str]) -> bool:
    return "--help" in args or args[0] == "methods" or (
        args[0] == "datasets" and all(a in ("--setup-help", "digits") for a in args[1:]))


def test_the_cheap_commands_of_the_docs_run(capsys):
    ran = []
    for doc, argv in _all_commands():
        args = _jaxclip(argv)
        if args and _cheap(args):
            try:
                status = cli.main(args)
            except SystemExit as exc:  # --help
                status = exc.code
            assert status == 0, f"{doc}: {shlex.join(argv)} exited {status}"
            assert capsys.readouterr().out.strip(), f"{doc}: {shlex.join(argv)} printed nothing"
            ran.append(args[0])
    assert {"methods", "datasets"} <= set(ran)


# -- the offline walkthroughs, for real (slow) -----------------------------------------------

OFFLINE_DATASETS = {"digits", "fashion_mnist"}


def _value(args: list[str], flag: str) -> str | None:
    for i, token in enumerate(args):
        if token == flag and i + 1 < len(args):
            return args[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def _offline(args: list[str]) -> bool:
    """Runs here without data, weights or a cluster (and is not the 3-minute demo)."""
    if args[0] in ("demo", "convert") or "--distributed" in args or "--data-root" in args:
        return False
    weights = _value(args, "--weights")
    datasets = _value(args, "--dataset")
    return (weights in (None, "random")
            and (datasets is None or set(datasets.split(",")) <= OFFLINE_DATASETS)
            and not (args[0] == "datasets" and "--sampler" in args))


@pytest.mark.slow
def test_the_offline_commands_of_the_docs_run_in_order(tmp_path, monkeypatch, capsys):
    """The docs' offline ``jaxclip-fs`` commands, README first, each doc in order, in one
    empty directory (later commands read what earlier ones wrote, as a reader following
    the docs would); a command two docs share runs once."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAXCLIP_FS_CACHE", str(tmp_path / "cache"))
    done: set[tuple[str, ...]] = set()
    for doc, argv in _all_commands():
        args = _jaxclip(argv)
        if not args or _cheap(args) or not _offline(args) or tuple(args) in done:
            continue
        done.add(tuple(args))
        status = cli.main(args + (["--quiet"] if args[0] == "run" else []))
        assert status == 0, f"{doc}: jaxclip-fs {shlex.join(args)} exited {status}:\n" \
                            f"{capsys.readouterr().err[-3000:]}"
    ran = {args[0] for args in done}
    assert {"extract", "validate", "evaluate", "run", "train-imo", "report", "embed"} <= ran


def test_ci_runs_the_readme_test_command():
    """``.ci/run`` runs the README's test command as written: lint, fast tier, slow tier."""
    readme_block = _blocks(DOCS[0])[0]
    (test_line,) = [line for line in readme_block.splitlines() if "pytest" in line]
    ci = _text(os.path.join(ROOT, ".ci", "run"))
    assert test_line in ci.splitlines()
    steps = [shlex.join(argv) for argv in _commands(test_line)]
    assert steps[-3:] == ["flake8", "python -m pytest -n 2 -m 'not slow' --durations=15 tests",
                          "python -m pytest -n 2 -m slow tests"]


def test_the_readme_is_short():
    assert len(_text(DOCS[0]).splitlines()) <= 200


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_resolves():
    """``[text](path#anchor)`` links point at files that exist and headings they have."""
    problems = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _text(path)):
            if re.match(r"\w+://", target):
                continue
            file, _, anchor = target.partition("#")
            goal = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(goal):
                problems.append(f"{os.path.relpath(path, ROOT)}: {target}: no such file")
            elif anchor and goal.endswith(".md"):
                headings = re.findall(r"^#+ (.*)$", _text(goal), flags=re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    problems.append(f"{os.path.relpath(path, ROOT)}: {target}: no such heading")
    assert not problems, "\n".join(problems)


def test_the_readme_method_table_lists_every_registered_method():
    from jaxclip_fs import methods

    section = _text(DOCS[0]).split("## Methods\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    listed = {name for cell in rows for name in re.findall(r"`(\w+)`", cell)}
    assert listed == set(methods.names())
