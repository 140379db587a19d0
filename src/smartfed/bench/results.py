"""Turn a bench folder's run directories into results.json and results.md (no torch).

Ratios are against ``fedit`` when it is in the bench (else None). ``rounds_to_fedit_loss`` is
the first evaluated round whose eval loss is at or below FedIT's final eval loss (0 if the
starting model already is; None if never reached).

A bench with ``--sweep`` / ``--seeds`` (smartfed.bench.sweep) gets :func:`seeded_results`: per
entry the grid, each point's validation loss, the choice, the per-seed numbers and their mean,
sample std and n, and verdicts under TIE_RULE. Its entries keep the single-run fields (the mean
over seeds), so readers of plain benches keep working.

Verdicts use the one vocabulary of :mod:`smartfed.bench.stats`: ``better`` / ``worse`` / ``tie``
on the final eval loss (lower is better), None below 2 seeds. Run folders are laid out and read
by :mod:`smartfed.bench.layout`. Nothing here imports torch: ``benchmarks/`` scripts and
``smartfed report`` read results without a model stack.
"""

from __future__ import annotations

from typing import Any

from smartfed.bench.layout import final_loss, loss_curve, seed_folder
from smartfed.bench.stats import BETTER, REFERENCE, TIE, TIE_RULE, WORSE, compare_spreads, spread


def rounds_to_reach(run: dict[str, Any], target: float | None) -> int | None:
    if target is None:
        return None
    for rnd, loss in loss_curve(run):
        if loss <= target:
            return rnd
    return None


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference in (None, 0):
        return None
    return value / reference


def method_result(run: dict[str, Any]) -> dict[str, Any]:
    summary, rows = run["summary"], run["rows"]
    metric = summary.get("final_metric")
    return {
        "method": summary.get("method"),
        "final_eval_loss": final_loss(summary),
        "initial_eval_loss": (summary.get("initial_eval") or {}).get("eval_loss"),
        "final_target_loss": final_loss(summary, initial_if_untrained=True, metric="target_loss"),
        "initial_target_loss": (summary.get("initial_eval") or {}).get("target_loss"),
        "metric": None if not metric else metric["value"],
        "metric_detail": metric,
        "bytes_up": summary.get("bytes_up", 0),
        "bytes_down": summary.get("bytes_down", 0),
        "rounds": summary.get("rounds", len(rows)),
        "step_time_s": summary.get("mean_step_time_s"),
        "energy_kwh": summary.get("energy_kwh"),
        "energy_method": summary.get("energy_method"),
        "wall_s": summary.get("wall_s"),
        "trainable_params": summary.get("trainable_parameters"),
        "communicated_params": summary.get("communicated_parameters"),
    }


def bench_results(
    task: str, command: str, runs: dict[str, dict[str, Any]], settings: dict[str, Any]
) -> dict[str, Any]:
    """results.json content for runs keyed by bench label."""
    methods = {label: method_result(run) for label, run in runs.items()}
    ref = methods.get(REFERENCE)
    ref_loss = ref["final_eval_loss"] if ref else None
    ref_rounds = rounds_to_reach(runs[REFERENCE], ref_loss) if ref else None
    for label, result in methods.items():
        total = result["bytes_up"] + result["bytes_down"]
        ref_total = ref["bytes_up"] + ref["bytes_down"] if ref else None
        result["comm_ratio_vs_fedit"] = _ratio(total, ref_total)
        result["rounds_to_fedit_loss"] = rounds_to_reach(runs[label], ref_loss)
        result["rounds_ratio_vs_fedit"] = _ratio(result["rounds_to_fedit_loss"], ref_rounds)
        result["step_time_ratio_vs_fedit"] = _ratio(
            result["step_time_s"], ref["step_time_s"] if ref else None
        )
        result["energy_ratio_vs_fedit"] = _ratio(
            result["energy_kwh"], ref["energy_kwh"] if ref else None
        )
    return {
        "task": task,
        "command": command,
        "reference": REFERENCE if ref else None,
        "settings": settings,
        "methods": methods,
    }


def _fmt(value: Any, spec: str = ".3f", none: str = "–") -> str:
    if value is None:
        return none
    if isinstance(value, int | float):
        return format(value, spec)
    return str(value)


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def results_markdown(results: dict[str, Any]) -> str:
    if results.get("seeds") is not None:  # a bench with --sweep / --seeds
        return seeded_markdown(results)
    lines = [
        f"# Benchmark: {results['task']}",
        "",
        f"Command: `{results['command']}`",
        "",
        "| method | final eval loss | metric | MiB up | MiB down | comm vs fedit | "
        "rounds to fedit loss | step s | step vs fedit | energy kWh | energy vs fedit | "
        "trainable params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results["methods"].items():
        metric = r["metric_detail"]
        metric_text = (
            f"{metric['correct']}/{metric['n']} ({metric['benchmark']})" if metric else "–"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    _fmt(r["final_eval_loss"], ".4f"),
                    metric_text,
                    _mib(r["bytes_up"]),
                    _mib(r["bytes_down"]),
                    _fmt(r["comm_ratio_vs_fedit"], ".4f"),
                    _fmt(r["rounds_to_fedit_loss"], "d", "never" if results["reference"] else "–"),
                    _fmt(r["step_time_s"], ".2f"),
                    _fmt(r["step_time_ratio_vs_fedit"], ".2f"),
                    _fmt(r["energy_kwh"], ".5f"),
                    _fmt(r["energy_ratio_vs_fedit"], ".2f"),
                    f"{r['trainable_params']:,}" if r["trainable_params"] is not None else "–",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Eval loss: mean answer-token loss on the task's held-out split (lower is better); for "
        "fedsa_lora the mean of the sampled clients' personalised models. Metric: the task "
        "benchmark on the final model (greedy, first N items). Bytes: Flower record payloads, "
        "all sampled clients, whole run. Step time: mean seconds per local training step. "
        "Energy: CodeCarbon, whole run including evaluation (estimated where the machine has "
        "no power counters).",
        "",
    ]
    return "\n".join(lines)


# --- Benches with --sweep / --seeds ---------------------------------------------------------

# Per-run numbers summarised across seeds (mean, sample std, n).
SEED_STATS = (
    "final_eval_loss", "initial_eval_loss", "final_target_loss", "initial_target_loss", "metric",
    "bytes_up", "bytes_down", "rounds",
    "step_time_s", "energy_kwh", "wall_s", "comm_ratio_vs_fedit", "rounds_to_fedit_loss",
    "rounds_ratio_vs_fedit", "step_time_ratio_vs_fedit", "energy_ratio_vs_fedit",
)  # fmt: skip


def report_run_dirs(bench: dict[str, Any]) -> dict[str, str]:
    """Label -> the run directory (relative to the bench folder) a report plots: the entry's
    own folder, or in a bench with --sweep / --seeds the run of its first seed."""
    seeds = bench.get("seeds")
    return {
        e["label"]: f"{e['label']}/{seed_folder(seeds[0])}" if seeds else e["label"]
        for e in bench["entries"]
    }


def seeded_results(
    task: str,
    command: str,
    settings: dict[str, Any],
    *,
    sweep: list[dict[str, Any]] | None,
    seeds: list[int],
    tuning: dict[str, dict[str, Any]],
    runs_by_seed: dict[int, dict[str, dict[str, Any]]],
    select_on: str = "validation",
) -> dict[str, Any]:
    """results.json of a bench with --sweep / --seeds (chosen on ``select_on``'s loss).

    ``tuning``: label -> {"method", "tuned", "untuned_reason", "grid": [{"point", "run_dir",
    "validation_loss"}], "chosen": point or None, "chosen_by"}; ``runs_by_seed``: seed ->
    label -> run (empty when only the tuning phase ran). Per seed the entries get the
    single-run numbers of :func:`bench_results` (ratios against FedIT of the same seed); each
    entry's top-level single-run fields hold the mean over seeds and ``stats`` the mean, std
    and n."""
    per_seed = {
        seed: bench_results(task, command, runs, settings)["methods"]
        for seed, runs in runs_by_seed.items()
    }
    methods: dict[str, dict[str, Any]] = {}
    for label, tune in tuning.items():
        rows = {seed: per_seed[seed][label] for seed in seeds if label in per_seed.get(seed, {})}
        stats = {key: spread([rows[s][key] if s in rows else None for s in seeds])
                 for key in SEED_STATS}  # fmt: skip
        first = rows.get(seeds[0], {})
        methods[label] = {
            **{key: stats[key]["mean"] for key in SEED_STATS},
            "method": tune["method"],
            "metric_detail": None,
            "trainable_params": first.get("trainable_params"),
            "communicated_params": first.get("communicated_params"),
            "energy_method": first.get("energy_method"),
            "tuned": tune["tuned"],
            "untuned_reason": tune["untuned_reason"],
            "grid": tune["grid"],
            "chosen": tune["chosen"],
            "chosen_by": tune.get("chosen_by"),
            "seeds": list(seeds),
            "per_seed": {str(seed): rows[seed] for seed in seeds if seed in rows},
            "stats": stats,
        }
    losses = {label: m["stats"]["final_eval_loss"] for label, m in methods.items()}
    reference = REFERENCE if REFERENCE in methods and runs_by_seed else None
    for label, m in methods.items():
        m["vs_fedit"] = compare_spreads(losses[label], losses[reference]) if reference else None
        m["vs_entries"] = {
            other: compare_spreads(losses[label], losses[other])["verdict"]
            for other in methods
            if other != label
        }
    return {
        "task": task,
        "command": command,
        "reference": reference,
        "settings": settings,
        "sweep": sweep,
        "seeds": list(seeds),
        "tuning_seed": seeds[0],
        "phase": "final" if runs_by_seed else "tuning",
        "select_on": select_on if sweep else None,
        "tie_rule": TIE_RULE,
        "methods": methods,
    }


def _pm(stats: dict[str, Any], spec: str = ".4f") -> str:
    if stats["mean"] is None:
        return "–"
    std = "–" if stats["std"] is None else format(stats["std"], spec)
    return f"{format(stats['mean'], spec)} ± {std} (n={stats['n']})"


def _point_text(point: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) if point else "–"


def seeded_markdown(results: dict[str, Any]) -> str:
    methods = results["methods"]
    seeds = results["seeds"]
    lines = [f"# Benchmark: {results['task']}", "", f"Command: `{results['command']}`", ""]
    sweep = results.get("sweep")
    on_target = results.get("select_on") == "target"
    if sweep:
        axes = "; ".join(
            f"{a['setting']} in {{{', '.join(str(v) for v in a['values'])}}}" for a in sweep
        )
        if on_target:
            how = (
                f"(seed {results['tuning_seed']}) scoring the target set's dev slice after its "
                "last round; neither the target's test slice nor the task's test split was read. "
                "The point with the lowest final target dev loss was chosen"
            )
        else:
            how = (
                f"with `eval_split=validation` (seed {results['tuning_seed']}): the eval loss "
                "came from a seeded slice of `eval_samples` training examples held out of every "
                "client's partition, and the test split was not read. The point with the lowest "
                "final validation loss was chosen"
            )
        lines += [
            f"Sweep: {axes}. Each entry that declares the swept setting(s) ran every grid point "
            f"{how} (ties: the first in grid order).",
            "",
            f"## Tuning: final {'target dev' if on_target else 'validation'} loss per grid point",
            "",
        ]
        points = next((m["grid"] for m in methods.values() if m["tuned"]), [])
        names = [_point_text(p["point"]) for p in points]
        lines += [
            "| method | " + " | ".join(names) + " | chosen |",
            "|---|" + "---|" * (len(names) + 1),
        ]
        for label, m in methods.items():
            if m["tuned"]:
                key = "target_dev_loss" if on_target else "validation_loss"
                cells = [_fmt(p[key], ".4f") for p in m["grid"]]
                chosen = _point_text(m["chosen"]) if m["chosen"] else "none (no finite loss)"
            else:
                cells = ["–"] * len(names)
                chosen = f"untuned ({m['untuned_reason']})"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {chosen} |")
        lines.append("")
    lines.append(f"Seeds: {', '.join(str(s) for s in seeds)}.")
    lines.append("")
    if results.get("phase") == "tuning":
        lines += ["Only the tuning phase has run (`--tune_only`): no test numbers yet.", ""]
        return "\n".join(lines)
    has_ref = results["reference"] is not None
    lines += [
        "## Test results: mean ± sample std over seeds (n)",
        "",
        "| method | setting | final test eval loss | vs fedit | metric | MiB up | MiB down | "
        "comm vs fedit | step s | energy kWh | trainable params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # Runs that scored a target set show its test loss first: the paper's metric.
    with_target = any(m["stats"]["final_target_loss"]["mean"] is not None for m in methods.values())
    if with_target:
        lines[-2] = lines[-2].replace("| setting |", "| setting | final target test loss |")
        lines[-1] += "---|"
    for label, m in methods.items():
        stats = m["stats"]
        verdict = (m["vs_fedit"] or {}).get("verdict") if has_ref else None
        if label == results["reference"]:
            verdict_text = "reference"
        elif verdict is None:
            verdict_text = "–"
        else:
            verdict_text = f"{verdict} ({m['vs_fedit']['difference']:+.4f})"
        setting = _point_text(m["chosen"]) if m["tuned"] else "untuned"
        bytes_up, bytes_down = stats["bytes_up"]["mean"], stats["bytes_down"]["mean"]
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    setting,
                    *([_pm(stats["final_target_loss"])] if with_target else []),
                    _pm(stats["final_eval_loss"]),
                    verdict_text,
                    _pm(stats["metric"], ".3f"),
                    _mib(bytes_up) if bytes_up is not None else "–",
                    _mib(bytes_down) if bytes_down is not None else "–",
                    _fmt(stats["comm_ratio_vs_fedit"]["mean"], ".4f"),
                    _pm(stats["step_time_s"], ".2f"),
                    _pm(stats["energy_kwh"], ".5f"),
                    f"{m['trainable_params']:,}" if m["trainable_params"] is not None else "–",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "## Final test eval loss per seed",
        "",
        "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for label, m in methods.items():
        values = m["stats"]["final_eval_loss"]["values"]
        lines.append(f"| {label} | " + " | ".join(_fmt(v, ".4f") for v in values) + " |")
    labels = list(methods)
    symbol = {BETTER: "<", WORSE: ">", TIE: "=", None: "–"}
    lines += [
        "",
        "## Pairwise: row vs column on mean final test eval loss",
        "",
        f"`<` lower, `>` higher, `=` tie. Tie rule: {TIE_RULE}.",
        "",
        "| | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for label in labels:
        cells = [
            "·" if other == label else symbol[methods[label]["vs_entries"][other]]
            for other in labels
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Eval loss: mean answer-token loss on the task's held-out test split (lower is better); "
        "validation losses are on the held-out slice of the training data. Metric: the task "
        "benchmark on the final model. Bytes: Flower record payloads, whole run. Step time: "
        "mean seconds per local training step. Energy: CodeCarbon, whole run.",
        "",
    ]
    return "\n".join(lines)
