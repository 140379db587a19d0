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
* A fresh interpreter (``sys.executable -s -P -B``, i.e. ``-I`` except ``-E``, see below) in its
  own session and process group, killed as a whole (``killpg(SIGKILL)``) on timeout and again
  after a normal exit, so children cannot outlive the sample.
* A fresh temporary working directory (also ``HOME`` and ``TMPDIR``), removed afterwards.
* A minimal environment built from scratch: nothing of the evaluator's environment (tokens,
  cloud keys) reaches the child. ``-E`` is left out only so that ``PYTHONHASHSEED=0`` applies and
  set/dict-of-str iteration order, hence pass@1, is reproducible; the environment is ours anyway.
* Resource limits: address space (``memory_mb``), CPU time (a little above the wall timeout),
  file size (per file: the total written inside the sandbox directory is not capped), no core
  dumps, open files; ``RLIMIT_NPROC=0`` for non-root users (root ignores it, so it is only a
  backstop; it also stops threads, which the guards forbid for everyone).
* Guards, installed by a small driver before the code runs: a ``sys.addaudithook`` hook (cannot
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

__all__ = ["SandboxError", "SandboxLimits", "SandboxResult", "run_python"]

STATUSES = ("ok", "error", "timeout", "memory", "blocked")

_MIN_MEMORY_MB = 64  # below this the interpreter itself cannot start
_MIN_FSIZE_BYTES = 16 * 2**20  # files the sample writes, its stdout and stderr included
_NOFILE = 256
_REAP_TIMEOUT_S = 5.0  # after SIGKILL; only a process stuck in the kernel takes longer
_STATUS_READ_BYTES = 64 * 1024
_DETAIL_CHARS = 300


class SandboxError(SmartFedError):
    """The sandbox itself cannot run (wrong platform, interpreter missing), not the sample."""


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


# The driver runs inside the child as `python -c _DRIVER`. It reads its configuration and the
# code from stdin, sets rlimits, installs the guards, then execs the code in a fresh __main__.
# It must stay cheap (hundreds of samples): only builtin/extension modules are imported up front.
# Status records go to a private fd as "<nonce>\t<kind>\t<detail>\n".
_DRIVER = r"""
import os
import sys


def _set_limits(mem, cpu, fsize, nofile):
    import resource

    def cap(res, soft, hard=None):
        hard = soft if hard is None else hard
        old_hard = resource.getrlimit(res)[1]
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        try:
            resource.setrlimit(res, (soft, hard))  # soft == hard: the code cannot raise them
        except (ValueError, OSError):
            pass

    cap(resource.RLIMIT_AS, mem)
    cap(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU first, SIGKILL a second later
    cap(resource.RLIMIT_FSIZE, fsize)  # CPython ignores SIGXFSZ: writes fail with EFBIG
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_NOFILE, nofile)
    if os.getuid() != 0:
        # Counts every process and thread of the uid, so 0 = no new ones at all. Root is
        # exempt whatever its capabilities; the guards are the real defence.
        cap(resource.RLIMIT_NPROC, 0)


def _install_guards(nonce, status_fd, root, out, err):
    # Runs in its own frame, which is gone by the time the code runs: the hook's state is not
    # reachable by walking the stack. Returns the function that writes the verdict.
    import _posixsubprocess
    import _signal
    import _thread
    import posix

    write, _exit, readlink = os.write, os._exit, os.readlink
    realpath, isabs, join, fsdecode = os.path.realpath, os.path.isabs, os.path.join, os.fsdecode
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def report(kind, detail):
        detail = " ".join(str(detail).split())[:300]
        write(status_fd, ("%s\t%s\t%s\n" % (nonce, kind, detail)).encode("utf-8", "replace"))

    def violation(what):
        # The first violation ends the process: untrusted code cannot catch os._exit.
        try:
            for stream in (out, err):
                try:
                    stream.flush()
                except BaseException:
                    pass
            write(2, ("blocked: %s\n" % what).encode("utf-8", "replace"))
            report("blocked", "blocked: " + what)
        finally:
            _exit(86)

    root = realpath(root)
    write_roots = (root,)
    write_files = ("/dev/null", "/dev/stdout", "/dev/stderr")
    read = {root, "/usr", "/lib", "/lib32", "/lib64", "/proc/%d" % os.getpid(),
            "/proc/cpuinfo", "/proc/meminfo", "/sys/devices/system/cpu", "/dev/null",
            "/dev/zero", "/dev/urandom", "/dev/random", "/etc/localtime", "/etc/mime.types"}
    for p in [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]:
        if p:
            read.add(realpath(p))
    read_roots = tuple(read)

    def within(path, roots):
        for r in roots:
            if path == r or path.startswith(r.rstrip("/") + "/"):
                return True
        return False

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            target = readlink("/proc/self/fd/%d" % path)
            # pipes and unnamed files have no path: "outside" for every check
            return realpath(target) if target.startswith("/") else "<fd %d>" % path
        p = fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not isabs(p):
            p = join(readlink("/proc/self/fd/%d" % dir_fd), p)
        return realpath(p)

    def must(event, path, dir_fd, roots, files, verb):
        if path is None:
            return
        if not isinstance(path, int) and not (isinstance(dir_fd, int) and dir_fd >= 0):
            try:
                if fsdecode(path) in files:
                    return
            except Exception:
                pass
        try:
            resolved = resolve(path, dir_fd)
        except Exception:
            violation("%s %r (path cannot be resolved)" % (event, path))
        if not within(resolved, roots):
            violation("%s %r %s" % (event, path, verb))

    def must_write(event, path, dir_fd=None):
        must(event, path, dir_fd, write_roots, write_files, "outside the sandbox directory")

    def must_read(event, path, dir_fd=None):
        must(event, path, dir_fd, read_roots, (), "for reading outside the allowed directories")

    def on_open(args):
        path, mode, flags = args
        if isinstance(path, int):
            return  # an fd already open: its access was checked when it was opened
        if isinstance(flags, int) and flags:
            writing = flags & write_flags
        else:
            writing = any(c in str(mode) for c in "wax+")
        (must_write if writing else must_read)("open", path)

    blocked_imports = frozenset(
        # re-importing these would undo the patches below
        ("cffi", "_cffi_backend", "_posixsubprocess", "_thread", "_signal", "posix")
    )

    def on_import(args):
        if str(args[0]).partition(".")[0] in blocked_imports:
            violation("import %s" % args[0])

    own_pid = os.getpid()

    def on_prlimit(args):  # limits of another process (the evaluator!) are not ours to change
        if args[0] not in (0, own_pid):
            violation("resource.prlimit on pid %r" % (args[0],))

    def on_dlopen(args):
        if args[0] is not None:  # None is the interpreter itself, which ctypes opens on import
            violation("ctypes (loading %r)" % (args[0],))

    def w1(event):  # (path, dir_fd)
        return lambda a: must_write(event, a[0], a[1] if len(a) > 1 else None)

    def w2(event):  # (src, dst, src_dir_fd, dst_dir_fd)
        def check(a):
            must_write(event, a[0], a[2] if len(a) > 2 else None)
            must_write(event, a[1], a[3] if len(a) > 3 else None)
        return check

    checks = {
        "open": on_open,
        "import": on_import,
        "ctypes.dlopen": on_dlopen,
        "resource.prlimit": on_prlimit,
        "os.remove": w1("os.remove"),
        "os.rmdir": w1("os.rmdir"),
        "os.mkdir": lambda a: must_write("os.mkdir", a[0], a[2]),
        "os.rename": w2("os.rename"),
        "os.link": w2("os.link"),
        "os.symlink": lambda a: must_write("os.symlink", a[1], a[2]),
        "os.truncate": lambda a: must_write("os.truncate", a[0]),
        "os.chmod": lambda a: must_write("os.chmod", a[0], a[2]),
        "os.chown": lambda a: must_write("os.chown", a[0], a[3]),
        "os.utime": lambda a: must_write("os.utime", a[0], a[3]),
        "os.chflags": lambda a: must_write("os.chflags", a[0]),
        "os.lchflags": lambda a: must_write("os.lchflags", a[0]),
        "os.setxattr": lambda a: must_write("os.setxattr", a[0]),
        "os.removexattr": lambda a: must_write("os.removexattr", a[0]),
        "shutil.rmtree": lambda a: must_write("shutil.rmtree", a[0], a[1]),
        "shutil.move": w2("shutil.move"),
        "shutil.chown": lambda a: must_write("shutil.chown", a[0]),
        "shutil.copyfile": lambda a: must_write("shutil.copyfile", a[1]),
        "shutil.copymode": lambda a: must_write("shutil.copymode", a[1]),
        "shutil.copystat": lambda a: must_write("shutil.copystat", a[1]),
        "shutil.copytree": lambda a: must_write("shutil.copytree", a[1]),
    }
    always = {
        "os.system": "os.system", "os.fork": "os.fork", "os.forkpty": "os.forkpty",
        "os.exec": "os.exec*", "os.posix_spawn": "os.posix_spawn", "os.spawn": "os.spawn*",
        "subprocess.Popen": "subprocess.Popen", "os.startfile": "os.startfile",
        "os.kill": "os.kill", "os.killpg": "os.killpg",
        "socket.__new__": "socket.socket", "socket.connect": "socket.connect",
        "socket.bind": "socket.bind", "socket.sendto": "socket.sendto",
        "socket.sendmsg": "socket.sendmsg", "socket.getaddrinfo": "socket.getaddrinfo",
        "socket.gethostbyname": "socket.gethostbyname",
        "socket.gethostbyaddr": "socket.gethostbyaddr",
        # `import ctypes` is allowed (numpy needs it; it only dlopens the process itself), but
        # looking up a symbol, calling a foreign function or touching raw memory is not.
        "ctypes.dlsym": "ctypes (symbol lookup)", "ctypes.dlsym/handle": "ctypes (symbol lookup)",
        "ctypes.call_function": "ctypes (foreign call)", "ctypes.cdata": "ctypes (raw memory)",
        "ctypes.string_at": "ctypes (raw memory)", "ctypes.wstring_at": "ctypes (raw memory)",
        "ctypes.memoryview_at": "ctypes (raw memory)",
        "gc.get_objects": "gc.get_objects", "gc.get_referrers": "gc.get_referrers",
        "gc.get_referents": "gc.get_referents", "_thread.start_new_thread": "threading",
        "webbrowser.open": "webbrowser.open",
    }
    busy = [False]

    def hook(event, args):
        if busy[0]:
            return  # our own checks (realpath, readlink) must not recurse
        label = always.get(event)
        if label is not None:
            violation(label)
        check = checks.get(event)
        if check is not None:
            busy[0] = True
            try:
                check(args)
            finally:
                busy[0] = False

    def blocker(what):
        def blocked(*args, **kwargs):
            violation(what)
        return blocked

    # Calls CPython does not audit: patch the modules (re-importing them is blocked above).
    _posixsubprocess.fork_exec = blocker("subprocess (fork_exec)")  # multiprocessing "spawn"
    for name in ("start_new_thread", "start_new", "start_joinable_thread"):
        if hasattr(_thread, name):
            setattr(_thread, name, blocker("threading"))
    if hasattr(_signal, "pidfd_send_signal"):
        _signal.pidfd_send_signal = blocker("signal.pidfd_send_signal")
    real_open, real_mkfifo = posix.open, posix.mkfifo

    def guarded_open(path, flags, mode=0o777, *, dir_fd=None):
        # the "open" audit event does not carry dir_fd: check relative opens here
        if dir_fd is not None:
            (must_write if flags & write_flags else must_read)("os.open", path, dir_fd)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def guarded_mkfifo(path, mode=0o666, *, dir_fd=None):  # not audited
        must_write("os.mkfifo", path, dir_fd)
        return real_mkfifo(path, mode, dir_fd=dir_fd)

    for module in (os, posix):
        module.open, module.mkfifo = guarded_open, guarded_mkfifo
        for name in ("mknod", "pidfd_open"):  # device nodes; signalling other processes
            if hasattr(module, name):
                setattr(module, name, blocker("os." + name))
    os.popen = blocker("os.popen")

    def self_only(name, real, index):  # not audited: may only target this process
        def guarded(*args, **kwargs):
            if len(args) > index and args[index] not in (0, own_pid):
                violation("%s on pid %r" % (name, args[index]))
            if name == "os.setpriority" and args and args[0] != os.PRIO_PROCESS:
                violation("os.setpriority on a process group or user")
            return real(*args, **kwargs)
        return guarded

    for name, index in (("sched_setaffinity", 0), ("sched_setscheduler", 0),
                        ("sched_setparam", 0), ("setpriority", 1)):
        real = getattr(posix, name, None)
        if real is not None:
            guarded = self_only("os." + name, real, index)
            setattr(os, name, guarded)
            setattr(posix, name, guarded)
    sys.addaudithook(hook)
    return report


def _main():
    raw = sys.stdin.buffer.read()
    header, _, body = raw.partition(b"\n")
    nonce, root_hex, status_fd, mem, cpu, fsize, nofile = header.decode("ascii").split(" ")
    source = body.decode("utf-8", "surrogatepass")
    del raw, header, body
    # stdin held the nonce: replace it with /dev/null before any untrusted code runs.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _set_limits(int(mem), int(cpu), int(fsize), int(nofile))

    import builtins
    import errno

    out, err, _exit = sys.stdout, sys.stderr, os._exit
    root = bytes.fromhex(root_hex).decode("utf-8", "surrogateescape")
    report = _install_guards(nonce, int(status_fd), root, out, err)
    del nonce, status_fd, root_hex

    main = type(sys)("__main__")
    namespace = main.__dict__
    namespace["__builtins__"] = builtins
    sys.modules["__main__"] = main
    sys.argv = [""]
    kind, detail = "ok", "ok"
    try:
        exec(compile(source, "<solution>", "exec"), namespace)
    except SystemExit as exc:
        kind, detail = "exit", "SystemExit(%r): the code exited before its end" % (exc.code,)
    except BaseException as exc:
        name = type(exc).__name__
        if isinstance(exc, MemoryError) or getattr(exc, "errno", None) == errno.ENOMEM:
            # Free what the code allocated before formatting anything.
            kind = "memory"
            exc.__traceback__ = None
            namespace.clear()
            detail = name
        else:
            kind = "error"
            try:
                text = str(exc)
            except BaseException:
                text = ""
            detail = "%s: %s" % (name, text) if text else name
        try:
            import linecache
            import traceback

            lines = source.splitlines(True)
            linecache.cache["<solution>"] = (len(source), None, lines, "<solution>")
            tb = exc.__traceback__
            tb = tb.tb_next if tb is not None else None  # hide the driver's own frame
            traceback.print_exception(type(exc), exc, tb, file=err)
        except BaseException:
            try:
                err.write(detail + "\n")
            except BaseException:
                pass
    try:
        out.flush()
        err.flush()
    except BaseException as exc:
        if kind == "ok":
            kind, detail = "error", "could not write the output: %s" % exc
    report(kind, detail)
    _exit(0 if kind == "ok" else 1)


_main()
"""


def _require_linux() -> None:
    if not sys.platform.startswith("linux"):
        raise SandboxError(
            f"the code sandbox needs Linux (process groups, rlimits, /proc); "
            f"this is {sys.platform!r}"
        )
    if not sys.executable:
        raise SandboxError("the code sandbox needs sys.executable, which is empty here")


def _child_env(workdir: str) -> dict[str, str]:
    """A minimal environment built from scratch: nothing of ours (secrets!) is inherited."""
    return {
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


def _read_record(stream: IO[bytes], nonce: str) -> tuple[str, str] | None:
    """The driver's (kind, detail), or None when the child died before writing one."""
    stream.seek(0)
    for line in stream.read(_STATUS_READ_BYTES).decode("utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[0] == nonce:
            return parts[1], parts[2]
    return None


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
        header = " ".join(
            [
                nonce,
                os.fsencode(wd).hex(),
                str(status.fileno()),
                str(limits.memory_mb * 2**20),
                str(cpu_s),
                str(fsize),
                str(_NOFILE),
            ]
        )
        stdin.write(header.encode("ascii") + b"\n" + code.encode("utf-8", "surrogatepass"))
        stdin.flush()
        stdin.seek(0)
        argv = [sys.executable, "-s", "-P", "-B", "-c", _DRIVER]
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
        record = _read_record(status, nonce)
    status_name, detail = _classify(record, returncode, timed_out, tail, limits)
    return SandboxResult(
        status=status_name,
        returncode=returncode,
        stdout=out,
        stderr=err,
        duration_s=duration,
        detail=detail,
    )
