"""Turn a bench folder's run directories into results.json and results.md (no torch).

Ratios are against ``fedit`` when it is in the bench (else None). ``rounds_to_fedit_loss`` is
the first evaluated round whose eval loss is at or below FedIT's final eval loss (0 if the
starting model already is; None if never reached).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smartfed.bench.variants import REFERENCE


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_run(run_dir: Path) -> dict[str, Any]:
    """summary.json + metrics.jsonl of one finished run."""
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    return {"summary": _read_json(run_dir / "summary.json"), "rows": rows}


def loss_curve(run: dict[str, Any]) -> list[tuple[int, float]]:
    """(round, eval loss) from round 0 (the starting model) on."""
    curve = []
    initial = run["summary"].get("initial_eval") or {}
    if "eval_loss" in initial:
        curve.append((0, initial["eval_loss"]))
    curve += [(row["round"], row["eval_loss"]) for row in run["rows"] if "eval_loss" in row]
    return curve


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
    final = summary.get("final_eval") or {}
    metric = summary.get("final_metric")
    return {
        "method": summary.get("method"),
        "final_eval_loss": final.get("eval_loss"),
        "initial_eval_loss": (summary.get("initial_eval") or {}).get("eval_loss"),
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
