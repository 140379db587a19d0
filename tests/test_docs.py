"""The documentation: README size, the MkDocs site, the generated CLI page, the design sections
the code cites, and every shell block of the README and docs/ (docs/contributing.md).

Shell blocks are tagged on the line before the fence: ``<!-- cheap -->`` blocks are run as
they are; ``<!-- long -->`` and ``<!-- gpu -->`` blocks are checked without running them: each
``smartfed`` command is parsed by the real argument parser, each Python script's flags must
appear in its ``--help``, each ``make`` target must pass ``make -n``, each shell script must
exist and parse (``bash -n``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TAGS = ("cheap", "long", "gpu")
SHELL = ("bash", "sh", "shell", "console")
FENCE = re.compile(r"^```(\S*)")
TAG = re.compile(r"^<!--\s*(\w+)\s*-->\s*$")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SMARTFED_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", HF_HUB_OFFLINE="1")
    return env


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def doc_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return [p for p in pages if "_tools" not in p.parts]


def code_blocks(text: str) -> list[tuple[int, str, str | None, str]]:
    """(line, language, tag, body) of every fenced block; tag from the line before the fence."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, language = i, match.group(1)
        tag = TAG.match(lines[i - 1]) if i else None
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        body = "\n".join(lines[i + 1 : j])
        blocks.append((start + 1, language, tag.group(1) if tag else None, body))
        i = j + 1
    return blocks


def shell_blocks() -> list[tuple[str, str | None, str]]:
    found = []
    for page in doc_pages():
        for line, language, tag, body in code_blocks(page.read_text(encoding="utf-8")):
            if language in SHELL:
                found.append((f"{page.relative_to(ROOT)}:{line}", tag, body))
    return found


def commands(body: str) -> list[list[str]]:
    """The commands of a shell block as argv lists: continuation lines joined, comments
    dropped, ``NAME=value`` assignments and env prefixes applied, ``$NAME`` expanded (an
    unknown variable stands for one placeholder word), split at ``&&``, ``||``, ``;``, ``|``."""
    variables: dict[str, str] = {}
    found = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            name, value = words[0].split("=", 1)
            variables[name] = value
            continue
        line = re.sub(
            r"\$\{?([A-Za-z_]\w*)\}?", lambda m: variables.get(m.group(1), "PLACEHOLDER"), line
        )
        current: list[str] = []
        for word in [*shlex.split(line, comments=True), "&&"]:
            if word in ("&&", "||", ";", "|"):
                while current and re.fullmatch(r"[A-Za-z_]\w*=.*", current[0]):
                    current.pop(0)  # an env prefix: VAR=value command ...
                if current:
                    found.append(current)
                current = []
            else:
                current.append(word)
    return found


@cache
def _help(*args: str) -> str:
    """``python ARGS --help``'s output (a script, or ``-m module command``)."""
    result = subprocess.run(
        [sys.executable, *args, "--help"], cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"{shlex.join(args)} --help failed:\n{result.stderr}"
    return result.stdout


@cache
def _script_help(script: str) -> str:
    """``python SCRIPT --help``'s output, run in this process (its imports, torch among them,
    are already loaded here: a fresh interpreter per script costs seconds each)."""
    path = ROOT / script
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), "--help"]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        assert not exc.code, f"{script} --help failed:\n{err.getvalue()[-2000:]}"
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return out.getvalue()


def _flags(argv: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in argv if w.startswith("--")]


ANY_ARGS = {"source", "flwr", "tensorboard", "cd", "mkdir", "rm", "cp", "git", "pip"}


SMARTFED = ("smartfed", ".venv/bin/smartfed")
# Parses each JSON-encoded argv with a fresh parser; prints the index of each one refused.
PARSE = """
import contextlib, io, json, sys
from smartfed.cli.main import build_parser
for i, argv in enumerate(json.loads(sys.argv[1])):
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            print(i)
"""


def refused_with_env(argvs: list[list[str]], exported: dict[str, str]) -> list[str]:
    """The ``smartfed`` commands of ``argvs`` refused by a parser built in a fresh process
    with ``exported`` set (plugins add flags and methods), all parsed in that one process."""
    result = subprocess.run(
        [sys.executable, "-c", PARSE, json.dumps([argv[1:] for argv in argvs])], cwd=ROOT,
        env={**_env(), **exported}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return [f"smartfed refuses: {shlex.join(argvs[int(i)])}" for i in result.stdout.split()]


def check_command(argv: list[str]) -> str | None:
    """Why ``argv`` (from a long or gpu block) would fail, or None when it checks out."""
    program = argv[0]
    if program in SMARTFED:
        from smartfed.cli.main import build_parser

        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exc:
            return f"smartfed refuses: {shlex.join(argv)}" if exc.code else None
        return None
    if program in ("python", "python3", ".venv/bin/python"):
        if argv[1:2] == ["-m"]:
            paths = [w.split("::")[0] for w in argv[3:] if not w.startswith("-")]
            missing = [p for p in paths if "/" in p and not (ROOT / p).exists()]
            return f"missing {missing}" if missing else None
        script = argv[1]
        if not (ROOT / script).is_file():
            return f"no script {script}"
        unknown = [f for f in _flags(argv[2:]) if f not in _script_help(script)]
        return f"{script} has no flag {unknown}" if unknown else None
    if program in ("pytest", ".venv/bin/pytest"):
        paths = [w.split("::")[0] for w in argv[1:] if not w.startswith("-")]
        missing = [p for p in paths if not (ROOT / p).exists()]
        return f"missing {missing}" if missing else None
    if program == "make":
        result = subprocess.run(
            ["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        return None if result.returncode == 0 else f"make -n failed: {result.stderr.strip()}"
    if program.endswith(".sh"):
        path = ROOT / program
        if not path.is_file() or not os.access(path, os.X_OK):
            return f"{program} is not an executable script"
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        return None if result.returncode == 0 else f"{program}: {result.stderr.strip()}"
    if program in ("mkdocs", ".venv/bin/mkdocs"):
        usage = _help("-m", "mkdocs", argv[1])
        unknown = [f for f in _flags(argv[2:]) if f not in usage]
        return f"mkdocs {argv[1]} has no flag {unknown}" if unknown else None
    if program in ANY_ARGS:
        return None
    return f"unknown command {program!r}: run it in a cheap block or teach tests/test_docs.py"


# ---------------------------------------------------------------------------------- README


def test_readme_is_at_most_200_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details into docs/"


def test_readme_keeps_the_setup_commands():
    blocks = code_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    bodies = [body for _, language, _, body in blocks if language in SHELL]
    assert any(
        re.search(r"^make demo\b", b, re.M) and re.search(r"^make test\b", b, re.M) for b in bodies
    )


@pytest.mark.integration
def test_readme_python_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    examples = [body for _, language, _, body in code_blocks(text) if language == "python"]
    assert len(examples) == 1
    result = subprocess.run(
        [sys.executable, "-c", examples[0]], cwd=tmp_path, env=_env(), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "routers" / "routers.safetensors").is_file()


# ---------------------------------------------------------------------------- shell blocks


def test_every_shell_block_is_tagged():
    untagged = [where for where, tag, _ in shell_blocks() if tag not in TAGS]
    assert not untagged, f"tag these blocks <!-- cheap|long|gpu --> on the line before: {untagged}"


def test_command_parsing():
    body = 'A="--x 1 --y"\nsmartfed run $A --z \\\n  2  # note\nFOO=1 make -n demo && ls $B'
    assert commands(body) == [
        ["smartfed", "run", "--x", "1", "--y", "--z", "2"],
        ["make", "-n", "demo"],
        ["ls", "PLACEHOLDER"],
    ]


def test_the_checker_fails_on_stale_commands():
    assert check_command(["smartfed", "run", "--no_such_flag", "1"])
    assert check_command(["smartfed", "no_such_command"])
    assert check_command(["smartfed", "run", "--preset", "nonsense"])
    assert check_command(["make", "no_such_target"])
    assert check_command(["training_scripts/no_such_script.sh"])
    assert check_command(["frobnicate"])
    assert check_command(["smartfed", "run", "--preset", "demo", "--dry_run"]) is None
    plugin = {"SMARTFED_PLUGINS": "tests/plugins/toy_method.py"}
    toy = ["smartfed", "run", "--method", "toy", "--toy_start", "0.3"]
    assert check_command(toy)  # no such flag without the plugin
    assert refused_with_env([toy, ["smartfed", "run", "--toy_stort", "1"]], plugin) == [
        "smartfed refuses: smartfed run --toy_stort 1"
    ]


LONG = [(w, b) for w, tag, b in shell_blocks() if tag in ("long", "gpu")]
CHEAP = [(w, b) for w, tag, b in shell_blocks() if tag == "cheap"]


def _split_block(body: str) -> tuple[dict[str, str], list[list[str]], list[list[str]]]:
    """(exported variables, the smartfed commands run under them, every other command)."""
    exported: dict[str, str] = {}
    with_env, others = [], []
    for argv in commands(body):
        if argv[0] == "export":
            exported.update(w.split("=", 1) for w in argv[1:] if "=" in w)
        elif exported and argv[0] in SMARTFED:
            with_env.append(argv)
        else:
            others.append(argv)
    return exported, with_env, others


@cache
def _refused_under(exported: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """Every long block's smartfed commands run under ``exported``, parsed in one fresh
    process (a plugin registers for good in the process that loads it)."""
    argvs = []
    for _, body in LONG:
        env, with_env, _ = _split_block(body)
        if tuple(sorted(env.items())) == exported:
            argvs += with_env
    return frozenset(refused_with_env(argvs, dict(exported)))


@pytest.mark.parametrize(("where", "body"), LONG, ids=[w for w, _ in LONG])
def test_long_and_gpu_blocks_are_current(where, body):
    assert commands(body), f"{where}: no command"
    exported, with_env, others = _split_block(body)
    problems = [problem for argv in others if (problem := check_command(argv))]
    if with_env:
        refused = _refused_under(tuple(sorted(exported.items())))
        problems += [
            p for argv in with_env if (p := f"smartfed refuses: {shlex.join(argv)}") in refused
        ]
    assert not problems, f"{where}: {problems}"


# Each runs real `smartfed` processes end to end (seconds of imports apiece): in `make test`,
# not in the unit tier.
@pytest.mark.integration
@pytest.mark.parametrize(("where", "body"), CHEAP, ids=[w for w, _ in CHEAP])
def test_cheap_blocks_run(where, body):
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body], cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    output = result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == 0, f"{where} failed:\n{output}"


# ------------------------------------------------------------------------ the design page

CITATION = re.compile(r"docs/design\.md §(\d+(?:\.\d+)?)(?:\s*-\s*(\d+(?:\.\d+)?))?")
SECTION = re.compile(r"^#{2,4} (\d+(?:\.\d+)?)\.? ", re.M)


def missing_sections(texts: dict[str, str], design: str) -> list[str]:
    """``where: §x.y`` for every citation of a section ``design`` has no heading for."""
    sections = set(SECTION.findall(design))
    missing = []
    for where, text in texts.items():
        for match in CITATION.finditer(text):
            missing += [f"{where}: §{s}" for s in match.groups() if s and s not in sections]
    return missing


def _sources() -> dict[str, str]:
    files = [p for d in ("src", "tests", "benchmarks") for p in (ROOT / d).rglob("*")]
    return {
        str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
        for p in files
        if p.suffix in (".py", ".sh", ".md", ".toml") and p.is_file()
    }


def test_every_cited_design_section_exists():
    sources = _sources()
    assert sum(len(CITATION.findall(t)) for t in sources.values()) >= 15
    assert not missing_sections(sources, (DOCS / "design.md").read_text(encoding="utf-8"))
    stale = [w for w, t in sources.items() if re.search(r"\bDESIGN(\.md)? ?§", t)]
    assert not stale, f"cite docs/design.md §x.y, not the old DESIGN brief: {stale}"


def test_missing_design_sections_are_caught():
    design = "## 1. The method\n### 1.4 EEQA\n"
    texts = {"a.py": "see docs/design.md §1.4 and docs/design.md §1.2-1.4", "b.py": "§9"}
    assert missing_sections(texts, design) == ["a.py: §1.2"]


def test_design_keeps_the_brief_numbering():
    design = (DOCS / "design.md").read_text(encoding="utf-8")
    assert "### 1.4 Elastic Expert Quota Allocation (EEQA)" in design
    assert {"1.1", "1.2", "1.3", "1.4", "1.5", "2", "3", "4", "5"} <= set(SECTION.findall(design))


# -------------------------------------------------------------- generated pages and the site


def test_cli_reference_is_current():
    result = subprocess.run(
        [sys.executable, str(DOCS / "_tools" / "gen_cli.py"), "--check"], cwd=ROOT, env=_env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_sphinx_roles_become_code():
    roles = _load(DOCS / "_tools" / "griffe_sphinx_roles.py")
    text = ":func:`allocate_quotas` and :mod:`smartfed.tuners.routing`, :class:`~a.b.C`"
    assert roles.convert(text) == "`allocate_quotas` and `smartfed.tuners.routing`, `C`"
    assert roles.convert(":meth:`title <x.y>`") == "`title`"


def test_links_out_of_docs_must_exist(tmp_path):
    from mkdocs.exceptions import PluginError

    hooks = _load(DOCS / "_tools" / "hooks.py")
    config = {"docs_dir": str(DOCS), "repo_url": "https://example.org/r"}
    page = SimpleNamespace(file=SimpleNamespace(src_uri="results.md"))
    good = "[c](../benchmarks/results/claims.md#x) [p](pool.md) [d](../benchmarks/results/)"
    assert hooks.on_page_markdown(good, page, config, None) == (
        "[c](https://example.org/r/blob/main/benchmarks/results/claims.md#x) [p](pool.md) "
        "[d](https://example.org/r/tree/main/benchmarks/results)"
    )
    with pytest.raises(PluginError, match="missing"):
        hooks.on_page_markdown("[x](../benchmarks/no_such_file.md)", page, config, None)


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
        env={**_env(), "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "allocate_quotas" in (site / "api" / "eeqa" / "index.html").read_text(encoding="utf-8")
    api = "".join(p.read_text(encoding="utf-8") for p in (site / "api").rglob("*.html"))
    assert not re.search(r":(func|mod|class|meth|data|attr):", api), "a Sphinx role was left"
    assert (site / "design" / "index.html").is_file()
