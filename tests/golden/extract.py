"""Extract the comparable facts of a run or bench directory for the golden record.

Reads only files (metrics.jsonl, summary.json, final/*.safetensors), never SmartFed code, so the
same extractor judges the code before and after a refactoring. Run as a script to (re)write a
record: ``python tests/golden/extract.py RUN_OR_BENCH_DIR OUT.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# What must match, and how closely. Losses and weights may move by float rounding only (the
# refactoring reorders no arithmetic on purpose); bytes, quotas and rounds are exact.
TOLERANCES = {
    "train_loss": {"abs": 2e-3},
    "eval_loss": {"abs": 2e-3},
    "initial_eval_loss": {"abs": 2e-3},
    "weights": {"rel": 1e-3, "abs": 1e-6},
    "bytes_down": "exact",
    "bytes_up": "exact",
    "quotas": "exact",
    "rounds": "exact",
}


def _weights(final: Path) -> dict[str, dict[str, float]]:
    from safetensors.numpy import load_file

    out: dict[str, dict[str, float]] = {}
    for file in sorted(final.glob("*.safetensors")):
        for name, value in sorted(load_file(str(file)).items()):
            value = value.astype("float64")
            out[f"{file.name}:{name}"] = {
                "sum": float(value.sum()),
                "norm": float((value**2).sum() ** 0.5),
                "first": float(value.reshape(-1)[0]),
            }
    return out


def extract_run(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    initial = (summary.get("initial_eval") or {}).get("eval_loss")
    return {
        "rounds": len(rows),
        "initial_eval_loss": initial,
        "per_round": [
            {
                "round": row["round"],
                "train_loss": row.get("train_loss"),
                "eval_loss": row.get("eval_loss"),
                "bytes_down": row.get("bytes_down"),
                "bytes_up": row.get("bytes_up"),
                "quotas": row.get("quotas"),
            }
            for row in rows
        ],
        "weights": _weights(run_dir / "final") if (run_dir / "final").is_dir() else {},
    }


def extract(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if (path / "bench.json").is_file():
        bench = json.loads((path / "bench.json").read_text())
        return {
            "kind": "bench",
            "entries": {e["label"]: extract_run(path / e["label"]) for e in bench["entries"]},
        }
    return {"kind": "run", "run": extract_run(path)}


def compare(expected: Any, actual: Any, key: str = "", where: str = "") -> list[str]:
    """Differences beyond TOLERANCES between two extracted records (empty: they match)."""
    problems: list[str] = []
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            return [f"{where}: keys differ: {sorted(expected)} vs {sorted(actual or {})}"]
        for k in expected:
            sub = key if key == "weights" else k
            problems += compare(expected[k], actual[k], sub, f"{where}/{k}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            return [f"{where}: {expected!r} vs {actual!r}"]
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            problems += compare(e, a, key, f"{where}[{i}]")
        return problems
    rule = TOLERANCES.get(key, "exact")
    if isinstance(expected, float) and isinstance(actual, int | float) and rule != "exact":
        bound = rule.get("abs", 0.0) + rule.get("rel", 0.0) * abs(expected)
        if abs(expected - actual) > bound:
            problems.append(f"{where}: {expected!r} vs {actual!r} (tolerance {bound:.3g})")
    elif expected != actual:
        problems.append(f"{where}: {expected!r} vs {actual!r}")
    return problems


if __name__ == "__main__":
    record = extract(sys.argv[1])
    record["tolerances"] = TOLERANCES
    Path(sys.argv[2]).write_text(json.dumps(record, indent=1) + "\n")
