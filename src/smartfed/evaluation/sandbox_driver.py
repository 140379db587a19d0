"""The program a sandboxed sample runs: ``python -s -P -B -m smartfed.evaluation.sandbox_driver``.

:func:`smartfed.evaluation.sandbox.run_python` starts it in a fresh interpreter and writes one
request to its stdin (:func:`encode_request`): a header line (nonce, sandbox directory, status
fd, limits) and the code. The driver reads it, replaces stdin with ``/dev/null`` (stdin held the
nonce), reports that it started, sets the rlimits, installs the guards (an audit hook and a few
patches, see :mod:`smartfed.evaluation.sandbox`), then execs the code in a fresh ``__main__``.
Status records go to the private fd as ``"<nonce>\\t<kind>\\t<detail>\\n"``: ``started``, then
one verdict (``ok``, ``error``, ``memory``, ``exit`` or ``blocked``).

It must stay cheap (hundreds of samples): only builtin and extension modules are imported before
the code runs, and the packages above it (``smartfed``, ``smartfed.evaluation``) import nothing.
Everything the guards need is bound in :func:`_install_guards`' own frame, which is gone by the
time the code runs. Importing this module does nothing: it only acts when run as ``__main__``.
"""

import os
import sys

STARTED = "started"  # the first record: the driver is running and has read its request


def encode_request(
    nonce: str,
    root: str,
    status_fd: int,
    memory_bytes: int,
    cpu_s: int,
    fsize_bytes: int,
    nofile: int,
    code: str,
) -> bytes:
    """What the parent writes to the driver's stdin: one ASCII header line, then the code."""
    header = " ".join(
        [
            nonce,
            os.fsencode(root).hex(),
            str(status_fd),
            str(memory_bytes),
            str(cpu_s),
            str(fsize_bytes),
            str(nofile),
        ]
    )
    return header.encode("ascii") + b"\n" + code.encode("utf-8", "surrogatepass")


def decode_request(raw: bytes) -> tuple[str, str, int, int, int, int, int, str]:
    """The inverse of :func:`encode_request`: (nonce, root, status_fd, memory, cpu, fsize,
    nofile, code)."""
    header, _, body = raw.partition(b"\n")
    nonce, root_hex, status_fd, mem, cpu, fsize, nofile = header.decode("ascii").split(" ")
    root = bytes.fromhex(root_hex).decode("utf-8", "surrogateescape")
    code = body.decode("utf-8", "surrogatepass")
    return nonce, root, int(status_fd), int(mem), int(cpu), int(fsize), int(nofile), code


def within(path: str, roots: tuple[str, ...]) -> bool:
    """Whether ``path`` (resolved) is one of ``roots`` or lies below one."""
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def read_roots(root: str, pid: int) -> tuple[str, ...]:
    """Where the sample may read: its directory, the Python installation and ``sys.path``,
    system libraries, its own ``/proc`` entry and a few harmless files (all resolved)."""
    realpath = os.path.realpath
    read = {
        realpath(root),
        "/usr",
        "/lib",
        "/lib32",
        "/lib64",
        f"/proc/{pid}",
        "/proc/cpuinfo",
        "/proc/meminfo",
        "/sys/devices/system/cpu",
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
        "/dev/random",
        "/etc/localtime",
        "/etc/mime.types",
    }
    for p in [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]:
        if p:
            read.add(realpath(p))
    return tuple(read)


def _set_limits(mem, cpu, fsize, nofile):
    import resource

    def cap(res, soft, hard=None):
        hard = soft if hard is None else hard
        old_hard = resource.getrlimit(res)[1]
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        try:  # noqa: SIM105  (contextlib is not imported here)
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
    inside = within  # bound here: rebinding the module's names later changes nothing

    def report(kind, detail):
        detail = " ".join(str(detail).split())[:300]
        write(status_fd, f"{nonce}\t{kind}\t{detail}\n".encode("utf-8", "replace"))

    def violation(what):
        # The first violation ends the process: untrusted code cannot catch os._exit.
        try:
            for stream in (out, err):
                try:  # noqa: SIM105  (contextlib is not imported here)
                    stream.flush()
                except BaseException:
                    pass
            write(2, f"blocked: {what}\n".encode("utf-8", "replace"))
            report("blocked", "blocked: " + what)
        finally:
            _exit(86)

    root = realpath(root)
    write_roots = (root,)
    write_files = ("/dev/null", "/dev/stdout", "/dev/stderr")
    readable = read_roots(root, os.getpid())

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            target = readlink(f"/proc/self/fd/{path:d}")
            # pipes and unnamed files have no path: "outside" for every check
            return realpath(target) if target.startswith("/") else f"<fd {path:d}>"
        p = fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not isabs(p):
            p = join(readlink(f"/proc/self/fd/{dir_fd:d}"), p)
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
            violation(f"{event} {path!r} (path cannot be resolved)")
        if not inside(resolved, roots):
            violation(f"{event} {path!r} {verb}")

    def must_write(event, path, dir_fd=None):
        must(event, path, dir_fd, write_roots, write_files, "outside the sandbox directory")

    def must_read(event, path, dir_fd=None):
        must(event, path, dir_fd, readable, (), "for reading outside the allowed directories")

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
            violation(f"import {args[0]}")

    own_pid = os.getpid()

    def on_prlimit(args):  # limits of another process (the evaluator!) are not ours to change
        if args[0] not in (0, own_pid):
            violation(f"resource.prlimit on pid {args[0]!r}")

    def on_dlopen(args):
        if args[0] is not None:  # None is the interpreter itself, which ctypes opens on import
            violation(f"ctypes (loading {args[0]!r})")

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
        "os.system": "os.system",
        "os.fork": "os.fork",
        "os.forkpty": "os.forkpty",
        "os.exec": "os.exec*",
        "os.posix_spawn": "os.posix_spawn",
        "os.spawn": "os.spawn*",
        "subprocess.Popen": "subprocess.Popen",
        "os.startfile": "os.startfile",
        "os.kill": "os.kill",
        "os.killpg": "os.killpg",
        "socket.__new__": "socket.socket",
        "socket.connect": "socket.connect",
        "socket.bind": "socket.bind",
        "socket.sendto": "socket.sendto",
        "socket.sendmsg": "socket.sendmsg",
        "socket.getaddrinfo": "socket.getaddrinfo",
        "socket.gethostbyname": "socket.gethostbyname",
        "socket.gethostbyaddr": "socket.gethostbyaddr",
        # `import ctypes` is allowed (numpy needs it; it only dlopens the process itself), but
        # looking up a symbol, calling a foreign function or touching raw memory is not.
        "ctypes.dlsym": "ctypes (symbol lookup)",
        "ctypes.dlsym/handle": "ctypes (symbol lookup)",
        "ctypes.call_function": "ctypes (foreign call)",
        "ctypes.cdata": "ctypes (raw memory)",
        "ctypes.string_at": "ctypes (raw memory)",
        "ctypes.wstring_at": "ctypes (raw memory)",
        "ctypes.memoryview_at": "ctypes (raw memory)",
        "gc.get_objects": "gc.get_objects",
        "gc.get_referrers": "gc.get_referrers",
        "gc.get_referents": "gc.get_referents",
        "_thread.start_new_thread": "threading",
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
                violation(f"{name} on pid {args[index]!r}")
            if name == "os.setpriority" and args and args[0] != os.PRIO_PROCESS:
                violation("os.setpriority on a process group or user")
            return real(*args, **kwargs)

        return guarded

    for name, index in (
        ("sched_setaffinity", 0),
        ("sched_setscheduler", 0),
        ("sched_setparam", 0),
        ("setpriority", 1),
    ):
        real = getattr(posix, name, None)
        if real is not None:
            guarded = self_only("os." + name, real, index)
            setattr(os, name, guarded)
            setattr(posix, name, guarded)
    sys.addaudithook(hook)
    return report


def _main():
    raw = sys.stdin.buffer.read()
    nonce, root, status_fd, mem, cpu, fsize, nofile, source = decode_request(raw)
    del raw
    # stdin held the nonce: replace it with /dev/null before any untrusted code runs.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # Tells the parent the driver itself could start (its package was importable).
    os.write(status_fd, f"{nonce}\t{STARTED}\t\n".encode("ascii"))
    _set_limits(mem, cpu, fsize, nofile)

    import builtins
    import errno

    out, err, _exit = sys.stdout, sys.stderr, os._exit
    report = _install_guards(nonce, status_fd, root, out, err)
    del nonce, status_fd

    main = type(sys)("__main__")
    namespace = main.__dict__
    namespace["__builtins__"] = builtins
    sys.modules["__main__"] = main
    sys.argv = [""]
    kind, detail = "ok", "ok"
    try:
        exec(compile(source, "<solution>", "exec"), namespace)
    except SystemExit as exc:
        kind, detail = "exit", f"SystemExit({exc.code!r}): the code exited before its end"
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
            detail = f"{name}: {text}" if text else name
        try:
            import linecache
            import traceback

            lines = source.splitlines(True)
            linecache.cache["<solution>"] = (len(source), None, lines, "<solution>")
            tb = exc.__traceback__
            tb = tb.tb_next if tb is not None else None  # hide the driver's own frame
            traceback.print_exception(type(exc), exc, tb, file=err)
        except BaseException:
            try:  # noqa: SIM105  (contextlib is not imported here)
                err.write(detail + "\n")
            except BaseException:
                pass
    try:
        out.flush()
        err.flush()
    except BaseException as exc:
        if kind == "ok":
            kind, detail = "error", f"could not write the output: {exc}"
    report(kind, detail)
    _exit(0 if kind == "ok" else 1)


if __name__ == "__main__":
    _main()
