"""``smartfed bench`` (methods side by side on one task), ``smartfed report`` (plots + page)
and ``smartfed methods`` (what --method and --methods accept)."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace

from smartfed.cli.run_command import add_run_arguments, check_inputs, given_settings, setting_flags
from smartfed.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="run several methods on one task with identical settings, then tabulate and plot",
        description="Every method gets the same task, data, partition, seed, rounds and "
        "evaluation; each runs into BENCH_DIR/<method>/ and a rerun skips finished methods and "
        "resumes an interrupted one. Shared settings are the `smartfed run` flags. "
        "Honest tuning: with --sweep SETTING=v1,v2 every entry whose method declares SETTING "
        "runs the grid on a validation slice held out of the training data (--eval_split "
        "validation: the test split is never read) into BENCH_DIR/tune/<method>/<SETTING=v>/, "
        "keeps the value with the lowest final validation loss (ties: the first), then runs "
        "it on the test split once per --seeds seed into BENCH_DIR/<method>/seed<k>/; "
        "results report mean ± sample std over seeds and call a difference within "
        "std_a + std_b a tie.",
    )
    bench.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods and ablations (default: all; see `smartfed methods`)",
    )
    bench.add_argument(
        "--data_fraction",
        type=float,
        default=None,
        help="data-efficiency mode: also run SmartFed on this share of every client's data",
    )
    bench.add_argument(
        "--sweep",
        action="append",
        metavar="SETTING=v1,v2,...",
        help="tune SETTING per entry over these values on the validation slice (lowest final "
        "validation loss wins, ties go to the first value); entries whose method does not "
        "declare SETTING run untuned. Repeat for a product grid",
    )
    bench.add_argument(
        "--seeds",
        metavar="S1,S2,...",
        help="run every entry (its tuned value with --sweep) once per seed and report mean ± "
        "sample std; tuning uses the first seed. Replaces --seed",
    )
    bench.add_argument(
        "--tune_only",
        action="store_true",
        help="with --sweep: run only the tuning phase (never reads the test split), then stop",
    )
    bench.add_argument(
        "--select_on",
        choices=("target", "validation"),
        help="with --sweep: choose each entry's grid point on the target set's dev slice "
        "(default where the task has a target set) or on the validation slice held out of the "
        "training data",
    )
    bench.add_argument("--no_report", action="store_true", help="skip the plots and report.md")
    add_run_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    report = subparsers.add_parser("report", help="plots and a markdown page for a run or bench")
    report.add_argument("folder", metavar="RUN_DIR|BENCH_DIR")
    report.add_argument("--output", metavar="DIR", help="where to write (default: the folder)")
    report.set_defaults(func=cmd_report)

    methods = subparsers.add_parser("methods", help="list the methods and bench ablations")
    methods.set_defaults(func=cmd_methods)


def cmd_bench(args: argparse.Namespace) -> int:
    from smartfed.assembly.config import gather
    from smartfed.bench.runner import run_bench
    from smartfed.bench.sweep import parse_seeds, parse_sweep
    from smartfed.bench.variants import default_methods, resolve_entries

    if args.resume:
        raise ConfigError("smartfed bench resumes by itself: rerun the same command instead")
    if args.overwrite:
        raise ConfigError(
            "smartfed bench resumes its runs by itself and never overwrites them: to start a "
            "bench over, delete its --output_dir folder or choose another one"
        )
    if args.method:
        raise ConfigError("smartfed bench takes --methods (a list), not --method")
    names = [m.strip() for m in (args.methods or ",".join(default_methods())).split(",")]
    entries = resolve_entries([n for n in names if n], args.data_fraction)
    if args.output_dir is None:
        args.output_dir = f"runs/bench_{args.task or (args.preset or 'default')}"
    sweep, seeds = parse_sweep(args.sweep), parse_seeds(args.seeds)
    given = given_settings(args)
    if seeds is not None and "seed" in given:
        raise ConfigError("give either --seed or --seeds, not both")
    for name in sweep.names if sweep else []:
        if name in given:
            raise ConfigError(f"--{name} is swept by --sweep; do not also give it as a flag")
    if args.tune_only and sweep is None:
        raise ConfigError("--tune_only needs --sweep")
    if args.select_on and sweep is None:
        raise ConfigError("--select_on chooses among --sweep's grid points: give --sweep")
    if seeds is not None and len(seeds) == 1 and sweep is None:
        given["seed"], seeds = seeds[0], None  # one seed and no grid: an ordinary bench
    values = gather(preset=args.preset, config_file=args.config, overrides=given)
    values.check_declared_by([e.method for e in entries])
    base = values.config_for(entries[0].method, strict=False)
    select_on = args.select_on or ("target" if base.target_samples else "validation")
    # With --tune_only no test data is read, not even to check that it exists.
    tuning_only = replace(base, eval_split="validation", target_split="dev", metric_samples=0)
    check_inputs(tuning_only if args.tune_only else base)
    command = "smartfed " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""
    results = run_bench(
        values,
        entries,
        base.output_dir,
        command or _rebuild(args),
        sweep=sweep,
        seeds=seeds,
        tune_only=args.tune_only,
        select_on=select_on,
    )
    if args.tune_only:
        for label, result in results["methods"].items():
            chosen = result["chosen"]
            shown = ", ".join(f"{k}={v}" for k, v in chosen.items()) if chosen else "untuned"
            print(f"{label}: {shown}")
        print(f"tuning results: {base.output_dir}/results.md")
        return 0
    if not args.no_report:
        from smartfed.report import write_report

        page = write_report(base.output_dir)
        print(f"report: {page}")
    print(f"results: {base.output_dir}/results.md")
    best = min(
        (r for r in results["methods"].values() if r["final_eval_loss"] is not None),
        key=lambda r: r["final_eval_loss"],
        default=None,
    )
    if best:
        what = "mean final test eval loss over seeds" if "seeds" in results else "final eval loss"
        print(f"lowest {what}: {best['method']} ({best['final_eval_loss']:.4f})")
    return 0


def _rebuild(args: argparse.Namespace) -> str:
    """The bench command line from parsed arguments (when not called from the shell)."""
    parts = ["smartfed", "bench"]
    for key in ("methods", "data_fraction", "preset", "config", "seeds"):
        if getattr(args, key, None) is not None:
            parts += [f"--{key}", str(getattr(args, key))]
    for spec in getattr(args, "sweep", None) or []:
        parts += ["--sweep", spec]
    if getattr(args, "tune_only", False):
        parts.append("--tune_only")
    if getattr(args, "select_on", None):
        parts += ["--select_on", args.select_on]
    for key in setting_flags():
        value = getattr(args, key, None)
        if value is None or key == "method":
            continue
        if isinstance(value, bool):
            parts.append(f"--{key}" if value else f"--no-{key}")
        else:
            parts += [f"--{key}", str(value)]
    return shlex.join(parts)


def cmd_report(args: argparse.Namespace) -> int:
    from smartfed.report import write_report

    page = write_report(args.folder, args.output)
    print(f"report: {page}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from smartfed.bench.variants import ablations
    from smartfed.methods import get_method, method_names

    for name in method_names():
        cls = get_method(name)
        kind = "reuse" if cls.reuses_pool else "fresh"
        print(f"{name:18s} [{kind}] {cls.summary}")
        defaults = cls.settings_class().to_dict()  # as they resolve with nothing given
        settings = ", ".join(f"--{k} {'unset' if v is None else v}" for k, v in defaults.items())
        print(f"{'':18s}   settings: {settings or 'none'}")
    for label, entry in ablations().items():
        print(f"{label:18s} [bench] {entry.description} ({entry.method} {entry.overrides})")
    from smartfed.tuners.routing import get_router, router_names

    for name in router_names():
        design = get_router(name)
        reads = "x and expert projections z" if design.needs_experts else "x"
        summary = (design.__doc__ or "").strip().splitlines()[0] if design.__doc__ else ""
        print(f"{name:18s} [router] reads {reads}; {summary}")
    return 0
