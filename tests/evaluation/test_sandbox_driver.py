"""The sandbox driver as code (its pure helpers) and as the process every sample runs in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import smartfed
from smartfed.evaluation import sandbox, sandbox_driver
from smartfed.evaluation.sandbox import SandboxError, SandboxLimits, run_python
from smartfed.evaluation.sandbox_driver import decode_request, encode_request, read_roots, within

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
LIMITS = SandboxLimits(timeout_s=5.0, memory_mb=256)
PACKAGE_PARENT = str(Path(smartfed.__file__).resolve().parent.parent)


# ------------------------------------------------------------------------------ as code


def test_importing_the_driver_runs_nothing() -> None:
    # Imported (not run as __main__): stdin untouched, no guard installed, helpers usable.
    assert sandbox_driver.__name__ == "smartfed.evaluation.sandbox_driver"
    assert callable(sandbox_driver._main) and callable(sandbox_driver._install_guards)
    assert sandbox_driver.__name__ == sandbox.DRIVER_MODULE


@pytest.mark.parametrize(
    ("root", "code"),
    [
        ("/tmp/smartfed-sandbox-abc", "print('hi')\n"),
        ("/tmp/dir with spaces/é", "s = 'naïve ✓'\nprint(s)"),
        (os.fsdecode(b"/tmp/bad-\xff-bytes"), "x = '\\ud800'"),  # not UTF-8 on disk
        ("/tmp/x", "line1\nline2\n\nno newline at the end"),
        ("/tmp/x", ""),
    ],
)
def test_a_request_round_trips(root: str, code: str) -> None:
    raw = encode_request("n0nce", root, 7, 2**30, 11, 2**24, 256, code)
    assert raw.split(b"\n", 1)[0].isascii()
    assert decode_request(raw) == ("n0nce", root, 7, 2**30, 11, 2**24, 256, code)


def test_a_request_keeps_lone_surrogates_in_the_code() -> None:
    code = "s = '\ud800'"  # what surrogatepass exists for
    assert decode_request(encode_request("n", "/r", 3, 1, 1, 1, 1, code))[-1] == code


@pytest.mark.parametrize(
    ("path", "roots", "inside"),
    [
        ("/a", ("/a",), True),
        ("/a/b/c", ("/a",), True),
        ("/ab", ("/a",), False),  # a prefix of the name is not a parent folder
        ("/a", ("/a/b",), False),
        ("/x/y", ("/a", "/x/"), True),
        ("/anything", ("/",), True),
        ("<fd 3>", ("/",), False),  # what an unnamed fd resolves to
        ("/a", (), False),
    ],
)
def test_within(path: str, roots: tuple[str, ...], inside: bool) -> None:
    assert within(path, roots) is inside


def test_read_roots_cover_the_sandbox_the_interpreter_and_nothing_of_the_user(
    tmp_path: Path,
) -> None:
    roots = read_roots(str(tmp_path), 1234)
    assert os.path.realpath(tmp_path) in roots
    assert os.path.realpath(sys.prefix) in roots and "/proc/1234" in roots
    assert within(os.path.realpath(sandbox_driver.__file__), roots)  # the driver itself (sys.path)
    assert not within(os.path.realpath(Path.home() / ".cache" / "huggingface" / "token"), roots)
    assert not within("/proc/1/environ", roots)


# ------------------------------------------------------------------------------ as a process


@linux_only
def test_the_driver_process_is_cheap_and_runs_as_a_module() -> None:
    code = (
        "import sys\n"
        "print('torch' in sys.modules, 'numpy' in sys.modules, 'transformers' in sys.modules)\n"
        "print(sorted(m for m in sys.modules if m.startswith('smartfed')))\n"
        "print(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[1:-1])\n"
    )
    r = run_python(code, LIMITS)
    assert r.status == "ok", (r.detail, r.stderr)
    heavy, package, argv = r.stdout.splitlines()
    assert heavy == "False False False"  # only builtin/extension modules before the code
    assert package == "['smartfed', 'smartfed.evaluation']"
    assert argv == "[b'-s', b'-P', b'-B', b'-m', b'smartfed.evaluation.sandbox_driver']"


@linux_only
def test_the_code_runs_in_a_fresh_main_and_the_driver_frame_is_hidden() -> None:
    r = run_python(
        "print(__name__, sorted(k for k in globals() if not k.startswith('__')))", LIMITS
    )
    assert r.stdout == "__main__ []\n"
    r = run_python("def f():\n    raise ValueError('boom')\nf()", LIMITS)
    assert r.status == "error" and r.detail == "ValueError: boom"
    assert "sandbox_driver" not in r.stderr and '"<solution>", line 3' in r.stderr


@linux_only
def test_a_driver_that_cannot_start_is_a_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "DRIVER_MODULE", "smartfed.evaluation.no_such_driver")
    with pytest.raises(SandboxError, match=r"did not start.*no_such_driver"):
        run_python("print('never')", LIMITS)


def test_pythonpath_is_passed_on_only_when_smartfed_came_from_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/somewhere/else", PACKAGE_PARENT]))
    assert sandbox._child_env("/tmp/w")["PYTHONPATH"] == PACKAGE_PARENT  # nothing else of ours
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    assert "PYTHONPATH" not in sandbox._child_env("/tmp/w")
    monkeypatch.delenv("PYTHONPATH")
    assert "PYTHONPATH" not in sandbox._child_env("/tmp/w")


def _bare_interpreter() -> str | None:
    """This Python without this environment's packages (a venv's base), if there is one."""
    base = getattr(sys, "_base_executable", None)
    if not base or not os.path.exists(base):
        return None
    if os.path.realpath(base) == os.path.realpath(sys.executable) and sys.prefix == sys.base_prefix:
        return None
    found = subprocess.run(
        [base, "-s", "-c", "import smartfed"], env={"PATH": os.defpath}, capture_output=True
    )
    return None if found.returncode == 0 else base


@linux_only
def test_an_uninstalled_checkout_on_pythonpath_works(monkeypatch: pytest.MonkeyPatch) -> None:
    base = _bare_interpreter()
    if base is None:
        pytest.skip("no interpreter without smartfed installed")
    monkeypatch.setattr(sys, "executable", base)
    monkeypatch.setenv("PYTHONPATH", PACKAGE_PARENT)
    r = run_python("import sys\nprint('torch' in sys.modules)", LIMITS)
    assert (r.status, r.stdout) == ("ok", "False\n"), (r.detail, r.stderr)
    assert run_python("import os\nos.system('true')", LIMITS).status == "blocked"
    monkeypatch.delenv("PYTHONPATH")
    with pytest.raises(SandboxError, match="did not start"):
        run_python("print(1)", LIMITS)
