"""Table of base model vs pool modules from the JSON results of ``benchmarks/pool_eval.sh``.

Usage: .venv/bin/python benchmarks/pool_eval_table.py [--write]
Prints markdown; ``--write`` also saves it as benchmarks/results/pool_eval/table.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "pool_eval"
# Each module of the committed pool, then its stronger rebuild (`make pool-v2`: 600 steps).
MODELS = ["base", "cn_chat", "cn_chat_v2", "en_math", "en_math_v2", "en_code", "en_code_v2"]
MANIFEST = Path(__file__).parent.parent / "src" / "smartfed" / "pool" / "manifest.json"
# (file suffix, column title)
LOSSES = [
    ("loss__zh_instruct", "zh_instruct loss (cn_chat skill)"),
    ("loss__gsm8k", "gsm8k loss (en_math skill)"),
    ("loss__code_instruct", "code_instruct loss (en_code skill)"),
    ("loss__math23k", "math23k loss (cn_math)"),
    ("loss__gsm8k_pal", "gsm8k_pal loss (math_code)"),
]
METRICS = [
    ("gsm8k", "GSM8K acc (en_math skill)"),
    ("humaneval", "HumanEval pass@1 (en_code skill)"),
    ("mgsm_zh", "MGSM-zh acc (cn_math)"),
    ("gsm_hard", "GSM-Hard acc (math_code)"),
    ("mbpp", "MBPP pass@1 (cn_code)"),
]


def _load(model: str, suffix: str) -> dict | None:
    path = RESULTS / f"{model}__{suffix}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _label(model: str) -> str:
    """The model, with its training steps from the built-in manifest (pool modules)."""
    modules = json.loads(MANIFEST.read_text())["modules"] if MANIFEST.is_file() else {}
    steps = (modules.get(model) or {}).get("recipe", {}).get("steps")
    return f"{model} ({steps} steps)" if steps else model


def _evaluated(suffixes: list[tuple[str, str]]) -> list[str]:
    return [m for m in MODELS if any(_load(m, suffix) for suffix, _ in suffixes)]


def table() -> str:
    lines = []
    header = ["model"] + [title for _, title in LOSSES]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in _evaluated(LOSSES):
        cells = [_label(model)]
        for suffix, _ in LOSSES:
            r = _load(model, suffix)
            cells.append("—" if r is None else f"{r['value']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    header = ["model"] + [title for _, title in METRICS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in _evaluated(METRICS):
        cells = [_label(model)]
        for suffix, _ in METRICS:
            r = _load(model, suffix)
            cells.append(
                "—" if r is None else f"{r['correct']}/{r['n']} ({r['seconds']['total']:.0f} s)"
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Losses: mean answer-token loss on the first 48 held-out examples (max_seq_len 256). "
        "Metrics: correct/items with greedy decoding, wall time of the eval in brackets; "
        "— = not run."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    text = table()
    print(text)
    if args.write:
        (RESULTS / "table.md").write_text(text)


if __name__ == "__main__":
    main()
