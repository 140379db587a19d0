"""Code sandbox: verdicts for ordinary code, and hostile code contained and reported as failed."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from smartfed.evaluation.sandbox import (
    SandboxLimits,
    SandboxResult,
    _child_env,
    _run_process,
    run_python,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=256)


def run(code: str, limits: SandboxLimits = LIMITS) -> SandboxResult:
    return run_python(code, limits)


def _live_processes_with(token: str) -> list[int]:
    """Pids whose command line contains ``token`` and that are not zombies."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if token.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def _assert_no_process_with(token: str) -> None:
    deadline = time.monotonic() + 3.0  # SIGKILL is asynchronous: give the kernel a moment
    while _live_processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_processes_with(token) == []


def _sleep_token() -> str:
    """A unique, valid `sleep` duration to find our processes by."""
    return f"{secrets.randbelow(9000) + 1000}.{secrets.randbelow(900000) + 100000}"


# ------------------------------------------------------------------------------ verdicts


def test_ok_captures_stdout_and_records_duration() -> None:
    r = run("print('hello')\nimport sys\nprint('oops', file=sys.stderr)")
    assert r.status == "ok" and r.ok
    assert r.returncode == 0
    assert r.stdout == "hello\n"
    assert r.stderr == "oops\n"
    assert r.detail == "ok"
    assert r.duration_s > 0


def test_assertion_failure_is_an_error() -> None:
    r = run("def f(x):\n    return x + 1\n\nassert f(1) == 3")
    assert r.status == "error" and not r.ok
    assert r.detail.startswith("AssertionError")
    assert "<solution>" in r.stderr  # the traceback names the sample, not the driver


def test_uncaught_exception_detail_is_the_last_traceback_line() -> None:
    r = run("x")
    assert r.status == "error"
    assert r.detail == "NameError: name 'x' is not defined"


def test_syntax_error_is_an_error() -> None:
    r = run("def f(:\n    pass")
    assert r.status == "error"
    assert r.detail.startswith("SyntaxError")


def test_stdin_is_empty_so_input_does_not_hang() -> None:
    r = run("input()")
    assert r.status == "error"
    assert r.detail.startswith("EOFError")


def test_stdin_cannot_be_rewound_to_read_the_driver_configuration() -> None:
    r = run("import os\nos.lseek(0, 0, os.SEEK_SET)\nprint(os.read(0, 4096))")
    assert r.status == "ok"
    assert r.stdout == "b''\n"


def test_ordinary_stdlib_and_numpy_code_runs() -> None:
    code = (
        "import collections, functools, heapq, itertools, json, math, random, re, tempfile\n"
        "import numpy as np\n"
        "P = collections.namedtuple('P', 'x y')\n"
        "print(P(1, 2), int(np.arange(5).sum()), math.comb(5, 2))"
    )
    r = run(code, SandboxLimits(timeout_s=10.0, memory_mb=512))
    assert r.status == "ok", r.detail
    assert r.stdout == "P(x=1, y=2) 10 10\n"


def test_output_is_truncated_to_max_output_bytes() -> None:
    limits = SandboxLimits(timeout_s=2.0, memory_mb=256, max_output_bytes=100)
    r = run("print('x' * 100_000)", limits)
    assert r.status == "ok"
    assert r.stdout == "x" * 100


def test_string_hashing_is_reproducible_across_runs() -> None:
    code = "print(list({str(i) for i in range(50)}))"
    assert run(code).stdout == run(code).stdout


# ------------------------------------------------------------------------------ early exits


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)\nassert False",
        "exit()\nassert False",
        "import os\nos._exit(0)\nassert False",
    ],
    ids=["sys.exit", "exit", "os._exit"],
)
def test_exiting_before_the_end_is_not_a_pass(code: str) -> None:
    r = run(code)
    assert r.status == "error"
    assert not r.ok


def test_a_forged_verdict_is_not_a_pass() -> None:
    code = (
        "import os\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, b'0' * 32 + b'\\tok\\tok\\n')\n"
        "    except OSError:\n"
        "        pass\n"
        "print('ok')\n"
        "os._exit(0)\n"
    )
    r = run(code)
    assert r.status == "error"


# ------------------------------------------------------------------------------ hostile code


def test_infinite_loop_times_out_within_bounded_time() -> None:
    limits = SandboxLimits(timeout_s=1.0, memory_mb=256)
    start = time.monotonic()
    r = run("while True:\n    pass", limits)
    elapsed = time.monotonic() - start
    assert r.status == "timeout"
    assert r.detail == "timed out after 1 s"
    assert 1.0 <= r.duration_s < 4.0
    assert elapsed < 5.0


@pytest.mark.parametrize(
    ("code", "what"),
    [
        ("import os\nwhile True:\n    os.fork()", "os.fork"),
        (
            "import multiprocessing, time\n"
            "def f():\n    time.sleep({token})\n"
            "while True:\n    multiprocessing.Process(target=f).start()",
            "os.fork",
        ),
        (
            "import multiprocessing, time\n"
            "def f():\n    time.sleep({token})\n"
            "if __name__ == '__main__':\n"
            "    while True:\n"
            "        multiprocessing.get_context('spawn').Process(target=f).start()",
            "fork_exec",
        ),
        (
            "import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '{token}'])",
            "subprocess.Popen",
        ),
        ("import os\nos.posix_spawnp('sleep', ['sleep', '{token}'], {{}})", "os.posix_spawn"),
        ("import os\nos.execvp('sleep', ['sleep', '{token}'])", "os.exec"),
        ("import os\nos.popen('sleep {token}')", "os.popen"),
    ],
    ids=[
        "os.fork",
        "multiprocessing-fork",
        "multiprocessing-spawn",
        "subprocess",
        "posix_spawn",
        "exec",
        "popen",
    ],
)
def test_process_creation_is_blocked_and_leaves_no_process(code: str, what: str) -> None:
    token = _sleep_token()
    r = run(code.format(token=token))
    assert r.status == "blocked", (r.status, r.detail, r.stderr)
    assert what in r.detail
    _assert_no_process_with(token)


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(10**10)", "x = []\nwhile True:\n    x.append('a' * 10**6)"],
    ids=["bytearray", "growing-list"],
)
def test_memory_bombs_are_reported_as_memory(code: str) -> None:
    r = run(code)
    assert r.status == "memory", (r.status, r.detail)
    assert "MemoryError" in r.detail


@pytest.mark.parametrize(
    "code",
    [
        "open({path!r}, 'w').write('pwned')",
        "import pathlib\npathlib.Path({path!r}).write_text('pwned')",
        "import os\nos.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))",
        "import os\nos.mkfifo({path!r})",
    ],
    ids=["open", "pathlib", "os.open", "mkfifo"],
)
def test_creating_a_file_outside_the_sandbox_is_blocked(code: str, tmp_path: Path) -> None:
    target = tmp_path / "evil.txt"
    r = run(code.format(path=str(target)))
    assert r.status == "blocked", (r.status, r.detail)
    assert not target.exists()


def test_writing_where_reading_is_allowed_is_blocked() -> None:
    # /proc/self/comm is readable and harmless to write (it renames this process).
    r = run("open('/proc/self/comm', 'w').write('pwned')\nprint(open('/proc/self/comm').read())")
    assert r.status == "blocked"
    assert "pwned" not in r.stdout


def test_a_symlink_does_not_lead_out_of_the_sandbox(tmp_path: Path) -> None:
    target = tmp_path / "evil.txt"
    r = run(f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('pwned')")
    assert r.status == "blocked"
    assert not target.exists()


def test_a_dir_fd_does_not_lead_out_of_the_sandbox() -> None:
    # /proc/self is readable, and nothing can be created there even if the guard failed.
    code = "import os\nfd = os.open('/proc/self', os.O_RDONLY)\nos.open('x', os.O_CREAT, dir_fd=fd)"
    r = run(code)
    assert r.status == "blocked"
    assert "os.open" in r.detail


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.remove({path!r})",
        "import os\nos.unlink({path!r})",
        "import os\nos.rename({path!r}, 'stolen')",
        "import os\nos.truncate({path!r}, 0)",
        "import os\nos.chmod({path!r}, 0o777)",
        "open({path!r}, 'a').write('pwned')",
    ],
    ids=["remove", "unlink", "rename", "truncate", "chmod", "append"],
)
def test_modifying_a_file_outside_the_sandbox_is_blocked(code: str, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o600)
    r = run(code.format(path=str(victim)))
    assert r.status == "blocked", (r.status, r.detail)
    assert victim.read_text() == "precious"
    assert victim.stat().st_mode & 0o777 == 0o600


def test_rmtree_outside_the_sandbox_is_blocked(tmp_path: Path) -> None:
    victim = tmp_path / "tree"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "file.txt").write_text("precious")
    r = run(f"import shutil\nshutil.rmtree({str(victim)!r})")
    assert r.status == "blocked"
    assert r.detail.startswith("blocked: shutil.rmtree")
    assert (victim / "sub" / "file.txt").read_text() == "precious"


def test_os_system_is_blocked(tmp_path: Path) -> None:
    target = tmp_path / "touched"
    r = run(f"import os\nos.system('touch {target}')")
    assert r.status == "blocked"
    assert r.detail == "blocked: os.system"
    assert not target.exists()


def test_a_caught_violation_still_counts_and_earlier_output_is_kept() -> None:
    code = (
        "print('before')\n"
        "import os\n"
        "try:\n"
        "    os.system('true')\n"
        "except BaseException:\n"
        "    pass\n"
        "print('survived')\n"
    )
    r = run(code)
    assert r.status == "blocked"
    assert r.stdout == "before\n"
    assert "blocked: os.system" in r.stderr


def test_sockets_are_blocked_and_nothing_connects() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            f"s = socket.socket()\ns.connect(('127.0.0.1', {port}))\n"
            "s.sendall(b'hello')\nprint('connected')"
        )
        r = run(code)
        assert r.status == "blocked"
        assert "socket" in r.detail
        assert "connected" not in r.stdout
        with pytest.raises(BlockingIOError):
            server.accept()
    r = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}))")
    assert r.status == "blocked"


def test_the_environment_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTFED_TEST_SECRET", "hunter2")
    r = run("import os\nprint(dict(os.environ))\nprint(os.environ.get('SMARTFED_TEST_SECRET'))")
    assert r.status == "ok"
    assert "hunter2" not in r.stdout
    assert "SMARTFED_TEST_SECRET" not in r.stdout.splitlines()[0]
    assert r.stdout.splitlines()[1] == "None"


def test_reading_files_outside_the_allowed_directories_is_blocked(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("hunter2")
    for code in (
        f"print(open({str(secret)!r}).read())",
        "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())",
    ):
        r = run(code)
        assert r.status == "blocked", (code, r.status, r.detail)
        assert "hunter2" not in r.stdout


@pytest.mark.parametrize(
    ("code", "what"),
    [
        ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "os.kill"),
        (
            "import os, resource\nresource.prlimit(os.getppid(), resource.RLIMIT_AS, (1, 1))",
            "prlimit",
        ),
        ("import os\nos.sched_setaffinity(os.getppid(), {0})", "sched_setaffinity"),
        ("import threading\nthreading.Thread(target=print).start()", "threading"),
        ("import ctypes\nctypes.CDLL('libc.so.6').system(b'true')", "ctypes"),
        ("import ctypes\nctypes.CDLL(None).system(b'true')", "ctypes"),
        ("import gc\ngc.get_objects()", "gc"),
    ],
    ids=[
        "kill-parent",
        "prlimit-parent",
        "affinity-parent",
        "thread",
        "ctypes-libc",
        "ctypes-self",
        "gc",
    ],
)
def test_other_dangerous_calls_are_blocked(code: str, what: str) -> None:
    r = run(code)
    assert r.status == "blocked", (r.status, r.detail)
    assert what in r.detail


# ------------------------------------------------------------------------------ the sandbox dir


def test_writing_inside_the_sandbox_works_and_the_directory_is_removed() -> None:
    code = (
        "import os, shutil, tempfile\n"
        "open('out.txt', 'w').write('hi')\n"
        "with tempfile.NamedTemporaryFile() as f:\n"
        "    f.write(b'x')\n"
        "os.makedirs('a/b')\n"
        "open('a/b/f', 'w').write('x')\n"
        "shutil.rmtree('a')\n"
        "os.rename('out.txt', 'moved.txt')\n"
        "print(os.getcwd())\n"
        "print(os.environ['HOME'])\n"
        "print(tempfile.gettempdir())\n"
        "print(open('moved.txt').read())\n"
    )
    r = run(code)
    assert r.status == "ok", (r.detail, r.stderr)
    cwd, home, tmp, content = r.stdout.splitlines()
    assert Path(cwd).name.startswith("smartfed-sandbox-")
    assert home == cwd and tmp == cwd
    assert content == "hi"
    assert not Path(cwd).exists()


# ------------------------------------------------------------------------------ process groups


@pytest.mark.skipif(shutil.which("sh") is None or shutil.which("sleep") is None, reason="no sh")
def test_background_children_are_killed_after_a_normal_exit(tmp_path: Path) -> None:
    token = _sleep_token()
    with open(os.devnull, "rb") as null, open(tmp_path / "o", "wb") as out:
        returncode, timed_out, duration = _run_process(
            ["sh", "-c", f"sleep {token} & sleep {token} & echo started"],
            cwd=str(tmp_path),
            env=_child_env(str(tmp_path)),
            stdin=null,
            stdout=out,
            stderr=out,
            pass_fds=(),
            timeout_s=5.0,
        )
    assert (returncode, timed_out) == (0, False)
    assert duration < 5.0
    _assert_no_process_with(token)


@pytest.mark.skipif(shutil.which("sh") is None or shutil.which("sleep") is None, reason="no sh")
def test_the_whole_group_is_killed_on_timeout(tmp_path: Path) -> None:
    token = _sleep_token()
    with open(os.devnull, "rb") as null, open(tmp_path / "o", "wb") as out:
        returncode, timed_out, duration = _run_process(
            ["sh", "-c", f"sleep {token} & sleep {token}"],
            cwd=str(tmp_path),
            env=_child_env(str(tmp_path)),
            stdin=null,
            stdout=out,
            stderr=out,
            pass_fds=(),
            timeout_s=0.5,
        )
    assert timed_out
    assert returncode is not None and returncode < 0
    assert 0.5 <= duration < 3.0
    _assert_no_process_with(token)


# ------------------------------------------------------------------------------ limits


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"timeout_s": True}, "timeout_s"),
        ({"memory_mb": 16}, "memory_mb"),
        ({"memory_mb": 256.0}, "memory_mb"),
        ({"max_output_bytes": -1}, "max_output_bytes"),
    ],
)
def test_invalid_limits_are_rejected(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SandboxLimits(**kwargs)  # type: ignore[arg-type]


def test_default_limits() -> None:
    limits = SandboxLimits()
    assert (limits.timeout_s, limits.memory_mb, limits.max_output_bytes) == (10.0, 1024, 65536)
