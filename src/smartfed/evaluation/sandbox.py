"""Run untrusted, model-generated Python code (HumanEval/MBPP tests, GSM-Hard PAL programs).

Threat model, honestly stated
-----------------------------
The code we run was written by a language model, not by an adversary. What we must survive is
the accidental and the careless: infinite loops, memory bombs, a stray ``os.system("rm ...")``,
a fork loop, a solution that deletes or overwrites files, opens a socket, reads the evaluator's
secrets from the environment, or calls ``exit(0)`` before the tests run. Against that, this module
is defence in depth on your own Linux machine. It is **not** a security boundary against a
determined attacker: CPython cannot be sandboxed from inside itself. Code written to escape can
reach the guards' closures and tamper with them or forge the verdict (frame and ``__closure__``
walking), and C extensions installed next to the interpreter (torch, psutil, ...) act below the
audit hook (``torch.save`` writes through C++, for instance). A process that escaped the guards
could also leave the process group with ``setsid`` and outlive the sample. Run code you truly
distrust inside a container or VM without network and without credentials.

What each sample gets
---------------------
* A fresh interpreter (``sys.executable -s -P -B``, i.e. ``-I`` except ``-E``, see below) running
  the driver :mod:`smartfed.evaluation.sandbox_driver` (``-m``) in its own session and process
  group, killed as a whole (``killpg(SIGKILL)``) on timeout and again after a normal exit, so
  children cannot outlive the sample.
* A fresh temporary working directory (also ``HOME`` and ``TMPDIR``), removed afterwards.
* A minimal environment built from scratch: nothing of the evaluator's environment (tokens,
  cloud keys) reaches the child. ``-E`` is left out only so that ``PYTHONHASHSEED=0`` applies and
  set/dict-of-str iteration order, hence pass@1, is reproducible; the environment is ours anyway.
  ``PYTHONPATH`` is set only when SmartFed itself was found through ours (an uninstalled
  checkout), and then only to the folder holding the ``smartfed`` package, so the driver imports.
* Resource limits: address space (``memory_mb``), CPU time (a little above the wall timeout),
  file size (per file: the total written inside the sandbox directory is not capped), no core
  dumps, open files; ``RLIMIT_NPROC=0`` for non-root users (root ignores it, so it is only a
  backstop; it also stops threads, which the guards forbid for everyone).
* Guards, installed by the driver before the code runs: a ``sys.addaudithook`` hook (cannot
  be removed once added) plus a few patches for calls CPython does not audit. Process creation
  (``os.system``, ``fork``, ``exec*``, ``spawn*``, ``posix_spawn``, ``subprocess``,
  ``multiprocessing``), signals and rlimit/affinity changes aimed at other processes, threads,
  sockets, ``cffi``, ``ctypes`` beyond ``import ctypes`` (numpy imports it; loading a library,
  looking up a symbol, calling a foreign function or touching raw memory is blocked), ``gc``
  object walking, and any write, delete, rename, chmod or chown outside the sandbox directory
  are blocked. ``os.putenv`` is allowed: numpy calls it on import, and with no child process
  possible it changes nothing outside the sample. Reads are limited to the sandbox
  directory, the Python installation and ``sys.path``, ``/usr``, ``/lib*`` and a few device
  files (so ``/proc/<parent>/environ``, ``~/.cache/huggingface/token`` and the like are out of
  reach).
  The first violation ends the child at once with ``os._exit``, so a ``try/except`` in the
  untrusted code cannot swallow it; the sample is reported as ``"blocked"``.
* An honest verdict: ``"ok"`` only when the code ran to its end. The driver reports through a
  private file descriptor with a per-run nonce, so ``print``-ing a fake verdict, ``exit(0)`` or
  ``os._exit(0)`` halfway through never counts as a pass.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO

from smartfed.errors import SmartFedError
from smartfed.evaluation.sandbox_driver import STARTED, encode_request

__all__ = ["SandboxError", "SandboxLimits", "SandboxResult", "run_python"]

STATUSES = ("ok", "error", "timeout", "memory", "blocked")

_MIN_MEMORY_MB = 64  # below this the interpreter itself cannot start
_MIN_FSIZE_BYTES = 16 * 2**20  # files the sample writes, its stdout and stderr included
_NOFILE = 256
_REAP_TIMEOUT_S = 5.0  # after SIGKILL; only a process stuck in the kernel takes longer
_STATUS_READ_BYTES = 64 * 1024
_DETAIL_CHARS = 300
DRIVER_MODULE = "smartfed.evaluation.sandbox_driver"


class SandboxError(SmartFedError):
    """The sandbox itself cannot run (wrong platform, interpreter or driver missing), not the
    sample."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-sample limits. ``memory_mb`` caps the child's address space (RLIMIT_AS)."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_output_bytes: int = 65536

    def __post_init__(self) -> None:
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"SandboxLimits.timeout_s must be a finite number > 0, got {t!r}")
        m = self.memory_mb
        if isinstance(m, bool) or not isinstance(m, int) or m < _MIN_MEMORY_MB:
            raise ValueError(
                f"SandboxLimits.memory_mb must be an integer >= {_MIN_MEMORY_MB} "
                f"(the interpreter needs that much to start), got {m!r}"
            )
        o = self.max_output_bytes
        if isinstance(o, bool) or not isinstance(o, int) or o < 0:
            raise ValueError(f"SandboxLimits.max_output_bytes must be an integer >= 0, got {o!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one sample; ``status`` is one of :data:`STATUSES`."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _require_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise SandboxError(
            f"the code sandbox needs Linux (process groups, rlimits, /proc); "
            f"this is {sys.platform!r}"
        )
    if not sys.executable:
        raise SandboxError("the code sandbox needs sys.executable, which is empty here")


def _driver_pythonpath() -> dict[str, str]:
    """``PYTHONPATH`` for the child, only if SmartFed was found through ours (not installed).

    An installed SmartFed (editable or not) is found through the interpreter's site-packages,
    which the child reads too; a checkout on ``$PYTHONPATH`` would not be, so that one folder
    (the parent of the ``smartfed`` package, nothing else of ours) is passed on.
    """
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # .../smartfed
    package_parent = os.path.dirname(package)
    ours = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if any(p and os.path.realpath(p) == package_parent for p in ours):
        return {"PYTHONPATH": package_parent}
    return {}


def _child_env(workdir: str) -> dict[str, str]:
    """A minimal environment built from scratch: nothing of ours (secrets!) is inherited."""
    return {
        **_driver_pythonpath(),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "TMP": workdir,
        "TEMP": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # reproducible str hashing, hence set order, hence pass@1
        "PYTHONUTF8": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        # BLAS/OpenMP pools would start threads (forbidden) and oversubscribe the cores.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
    }


def _wait_for_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait until the child exits, without reaping it; False on timeout.

    Not reaping matters: the zombie leader keeps its process-group id reserved, so the
    ``killpg`` that follows cannot hit an unrelated group that reused the number.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # kernel < 5.3 or seccomp: reap, accept the tiny race
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(math.ceil(timeout_s * 1000)))
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(pgid, signal.SIGKILL)


def _run_process(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    stdin: IO[bytes],
    stdout: IO[bytes],
    stderr: IO[bytes],
    pass_fds: tuple[int, ...],
    timeout_s: float,
) -> tuple[int | None, bool, float]:
    """Run ``argv`` in its own session; kill its whole process group when it ends or times out.

    Returns (returncode, timed_out, duration_s). Raises only if the process cannot be started.
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=pass_fds,
        close_fds=True,
        start_new_session=True,  # own session => own process group, pgid == pid
    )
    timed_out = True
    try:
        timed_out = not _wait_for_exit(proc, timeout_s)
    finally:
        # Also after a normal exit (and on KeyboardInterrupt): no child may outlive the sample.
        _kill_group(proc.pid)
        try:
            returncode: int | None = proc.wait(timeout=_REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            returncode = None
    return returncode, timed_out, time.monotonic() - started


def _read_head(stream: IO[bytes], limit: int) -> str:
    stream.seek(0)
    return stream.read(limit).decode("utf-8", errors="replace")


def _read_record(stream: IO[bytes], nonce: str) -> tuple[bool, tuple[str, str] | None]:
    """Whether the driver started, and its (kind, detail) or None when the child died first."""
    stream.seek(0)
    started = False
    for line in stream.read(_STATUS_READ_BYTES).decode("utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[0] == nonce:
            if parts[1] == STARTED:
                started = True
            else:
                return started, (parts[1], parts[2])
    return started, None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:_DETAIL_CHARS] if lines else ""


def _classify(
    record: tuple[str, str] | None,
    returncode: int | None,
    timed_out: bool,
    stderr_tail: str,
    limits: SandboxLimits,
) -> tuple[str, str]:
    if timed_out:
        return "timeout", f"timed out after {limits.timeout_s:g} s"
    if record is not None:
        kind, detail = record
        if kind == "ok":
            if returncode == 0:
                return "ok", detail
            return "error", f"exit code {returncode} after the code finished"
        if kind in ("error", "memory", "blocked"):
            return kind, detail
        return "error", detail  # "exit": SystemExit before the end of the code
    # No record: the process died on its own (signal, os._exit, interpreter crash).
    last = _last_line(stderr_tail)
    if returncode is not None and returncode < 0:
        sig = -returncode
        if sig == signal.SIGXCPU:
            return "timeout", "CPU time limit exceeded"
        if "MemoryError" in stderr_tail or "Cannot allocate memory" in stderr_tail:
            return "memory", last or "out of memory"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return "error", f"killed by signal {name}" + (f": {last}" if last else "")
    if "MemoryError" in stderr_tail or "Cannot allocate memory" in stderr_tail:
        return "memory", last or "out of memory"
    return "error", f"exited with code {returncode} before the end of the code" + (
        f": {last}" if last else ""
    )


def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` in a fresh, guarded interpreter and report what happened.

    Never raises for anything the code does; raises :class:`SandboxError` only when the sandbox
    cannot run at all (not Linux, or the interpreter cannot be started).
    """
    limits = limits if limits is not None else SandboxLimits()
    _require_linux()
    nonce = secrets.token_hex(16)
    cpu_s = math.ceil(limits.timeout_s) + 1  # the wall clock normally fires first
    fsize = max(_MIN_FSIZE_BYTES, 2 * limits.max_output_bytes)
    with (
        tempfile.TemporaryDirectory(prefix="smartfed-sandbox-", ignore_cleanup_errors=True) as wd,
        tempfile.TemporaryFile() as stdin,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
        tempfile.TemporaryFile() as status,
    ):
        # Unnamed temporary files (not inside the sandbox directory) so the code cannot
        # reach our copies of its output or its verdict by path.
        request = encode_request(
            nonce,
            wd,
            status.fileno(),
            limits.memory_mb * 2**20,
            cpu_s,
            fsize,
            _NOFILE,
            code,
        )
        stdin.write(request)
        stdin.flush()
        stdin.seek(0)
        argv = [sys.executable, "-s", "-P", "-B", "-m", DRIVER_MODULE]
        try:
            returncode, timed_out, duration = _run_process(
                argv,
                cwd=wd,
                env=_child_env(wd),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(status.fileno(),),
                timeout_s=limits.timeout_s,
            )
        except OSError as exc:
            raise SandboxError(
                f"cannot start the sandbox interpreter {sys.executable}: {exc}"
            ) from exc
        out = _read_head(stdout, limits.max_output_bytes)
        err = _read_head(stderr, limits.max_output_bytes)
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 4096))
        tail = stderr.read().decode("utf-8", errors="replace")
        started, record = _read_record(status, nonce)
    if not started and not timed_out:
        # Nothing of the sample ran: the driver itself could not start (e.g. not importable).
        raise SandboxError(
            f"the sandbox driver did not start ({sys.executable} -m {DRIVER_MODULE}, exit code "
            f"{returncode}): {_last_line(tail) or 'no output'}"
        )
    status_name, detail = _classify(record, returncode, timed_out, tail, limits)
    return SandboxResult(
        status=status_name,
        returncode=returncode,
        stdout=out,
        stderr=err,
        duration_s=duration,
        detail=detail,
    )
