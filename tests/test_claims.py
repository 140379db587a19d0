"""benchmarks/claims.py: the verdict of each paper claim from fake result folders, written the
way the benchmarks write them (seed runs, then benchmarks/reference_table.py's summary.json).
The dry run is replaced by a fake planner (the real one loads torch and takes 15 s here). Every
expected figure is computed here from the fake inputs."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.benchmark_scripts import import_benchmark

ROOT = Path(__file__).resolve().parents[1]
NOISE = (-0.01, 0.0, 0.01)  # per seed: a spread of 0.01 around each curve
METHOD = "CodeCarbon offline, estimated, not measured: CPU load x TDP"

# Per task and entry: (loss per round, round 0 first; bytes up, down per round; kWh per round).
CN_MATH = {
    "fedit": ([3.0, 2.6, 2.4, 2.3, 1.0], (600, 400), 1e-3),
    "smartfed": ([2.5, 1.05, 0.95, 0.9, 0.85], (6, 4), 1e-4),
    "merge": ([2.2], (0, 0), 0.0),
    "mole": ([2.4, 1.0, 0.92, 0.88, 0.86], (6, 4), 1e-4),  # within the spreads of smartfed
    "smartfed_pool_v2": ([2.0, 0.8, 0.7, 0.65, 0.6], (6, 4), 1e-4),
}
MATH_CODE = {
    "fedit": ([3.0, 1.0, 0.9, 0.85, 0.8], (600, 400), 1e-3),
    "smartfed": ([2.5, 2.4, 2.3, 2.2, 2.1], (60, 40), 2e-3),  # never reaches FedIT's targets
    "merge": ([2.2], (0, 0), 0.0),
}


@pytest.fixture(scope="module")
def claims() -> ModuleType:
    return import_benchmark("claims")


def _run(
    run: Path,
    losses: list[float],
    up_down: tuple[int, int],
    kwh: float | None,
    target: list[float] | None = None,
) -> None:
    """One seed run; ``target``: its target loss per round too (round 0 first)."""
    run.mkdir(parents=True)
    rounds = len(losses) - 1
    rows = [
        {"round": r, "eval_loss": loss, "bytes_up": up_down[0], "bytes_down": up_down[1],
         "energy_kwh": None if kwh is None else kwh * r}
        for r, loss in enumerate(losses[1:], start=1)
    ]  # fmt: skip
    for row, loss in zip(rows, (target or [])[1:], strict=False):
        row["target_loss"] = loss
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = {
        "rounds": rounds,
        "bytes_up": up_down[0] * rounds,
        "bytes_down": up_down[1] * rounds,
        "wall_s": 1.0,
        "initial_eval": {"eval_loss": losses[0]},
        "final_eval": {"round": rounds, "eval_loss": losses[-1]},
        "energy_kwh": None if kwh is None else kwh * rounds,
        "energy_method": METHOD,
    }
    if target:
        summary["initial_eval"]["target_loss"] = target[0]
        summary["final_target"] = {"round": rounds, "target_loss": target[-1]}
    (run / "summary.json").write_text(json.dumps(summary))
    config = {"model_name_or_path": "tiny-model", "num_rounds": rounds, "num_clients": 8,
              "sample_clients": 2, "device": "cpu", "method_settings": {}}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))


def _bench(
    task_dir: Path, folder: str, labels: dict[str, tuple], targets: dict | None = None
) -> None:
    """One bench folder, untuned, seeds 0-2, one entry per label (``targets``: per label, the
    target loss per round, which the runs score too)."""
    bench = task_dir / folder
    bench.mkdir(parents=True)
    methods = {label: {"method": label.split("_data")[0], "tuned": False} for label in labels}
    results = {"seeds": [0, 1, 2], "methods": methods}
    (bench / "results.json").write_text(json.dumps(results))
    for label, (curve, up_down, kwh) in labels.items():
        target = (targets or {}).get(label)
        for seed, delta in enumerate(NOISE):
            losses = [loss + delta for loss in curve]
            shifted = [loss + delta for loss in target] if target else None
            _run(bench / label / f"seed{seed}", losses, up_down, kwh, shifted)


def _reference(results: Path, task: str, entries: dict[str, tuple]) -> None:
    table = import_benchmark("reference_table")
    for name, spec in entries.items():
        _bench(results / "reference" / task, name, {name: spec})
    table.write_outputs(task, results / "reference" / task, "cmd")


def _data_limited(results: Path, data10_final: float) -> None:
    table = import_benchmark("reference_table")
    task_dir = results / "data_limited" / "cn_math"
    _bench(task_dir, "fedit", {"fedit": ([3.0, 2.0, 1.5, 1.2, 1.0], (600, 400), 1e-3)})
    # One folder per arm, each with SmartFed's label, as benchmarks/data_limited.sh writes them.
    _bench(task_dir, "smartfed", {"smartfed": ([2.5, 1.0, 0.95, 0.9, 0.9], (6, 4), 1e-4)})
    _bench(
        task_dir,
        "smartfed_data10",
        {"smartfed": ([2.5, 1.2, 1.1, 1.0, data10_final], (6, 4), 1e-4)},
    )
    table.write_outputs("cn_math", task_dir, "cmd")


def _pool_eval(results: Path) -> None:
    """cn_math's metric at the floor for every model; math_code's off it for one module."""
    folder = results / "pool_eval"
    folder.mkdir(parents=True)
    scores = {"base__mgsm_zh": (0, 50), "en_math__mgsm_zh": (1, 50),
              "base__gsm_hard": (0, 20), "en_math__gsm_hard": (5, 20)}  # fmt: skip
    for name, (correct, n) in scores.items():
        (folder / f"{name}.json").write_text(json.dumps({"correct": correct, "n": n}))


def _planner(claims: ModuleType):
    """Fake dry runs: the default router trains 500 parameters, the linear one 5,000; the
    default model has 1e6 parameters, the 7B config 1e7."""

    def plan(overrides: dict):
        trained = 5_000 if overrides.get("router") == "linear" else 500
        base = 10_000_000 if "model_name_or_path" in overrides else 1_000_000
        return claims.PlanFigures(base=base, trained=trained, sent=trained, pool=["a", "b"],
                                  scale="tiny-model, 4 rounds")  # fmt: skip

    return plan


def _first(curve: list[float], target: float) -> int | None:
    return next((r for r, loss in enumerate(curve) if loss <= target), None)


def _rows(claims: ModuleType, results: Path) -> list:
    rows, _, _ = claims.build_rows(claims.Sources(results), _planner(claims))
    return rows


def _row(rows: list, claim: str, task: str):
    return next(r for r in rows if claim in r.claim and r.task.startswith(task))


def test_verdicts_and_figures(claims, tmp_path):
    results = tmp_path / "results"
    _reference(results, "cn_math", CN_MATH)
    _reference(results, "math_code", MATH_CODE)
    _pool_eval(results)
    _data_limited(results, data10_final=0.95)
    rows = _rows(claims, results)

    # 1. Accuracy: cn_math at the floor; math_code's metric is off it for one module.
    accuracy = _row(rows, "10.21%", "cn_math")
    assert accuracy.verdict.startswith(claims.CANNOT)
    assert "base 0/50, en_math 1/50" in accuracy.verdict
    text = "\n".join(accuracy.figure)
    assert "SmartFed 0.8500 ± 0.0100 (n=3) vs FedIT 1.0000 ± 0.0100 (n=3): better" in text
    assert "best other baseline (mole) 0.8600 ± 0.0100 (n=3): SmartFed tie" in text
    assert _row(rows, "10.21%", "math_code").verdict.startswith(claims.MISSING)
    assert "worse" in _row(rows, "10.21%", "math_code").figure[0]

    # 2. Convergence: cn_math's rounds ratio from the fake curves on both targets.
    for task, entries, verdict in (("cn_math", CN_MATH, claims.HOLDS),
                                   ("math_code", MATH_CODE, claims.NOT)):  # fmt: skip
        fedit, smartfed, merge = (entries[n][0] for n in ("fedit", "smartfed", "merge"))
        targets = {"T_half": merge[0] + (fedit[-1] - merge[0]) / 2, "T_fedit": 1.1 * fedit[-1]}
        row = _row(rows, "faster convergence", task)
        assert row.verdict == verdict, (task, row.figure)
        for name, target in targets.items():
            ref, mine = _first(fedit, target), _first(smartfed, target)
            line = next(f for f in row.figure if f.startswith(f"rounds to {name}"))
            if mine is None:
                assert "SmartFed never reaches it" in line
            else:
                assert line.endswith(f"= {ref / mine:.2f}×")
                assert ref / mine >= claims.CLAIM_CONVERGENCE[1]
    assert any("largest measurable ratio is 4" in f for f in _row(rows, "faster", "cn").figure)

    # 3. Communication: cn_math holds everywhere; math_code's bytes per round ratio (10) is
    # above 1 while SmartFed never reaches a target: the measures disagree, partly holds.
    row = _row(rows, "lower communication", "cn_math")
    per_round = sum(CN_MATH["fedit"][1]) / sum(CN_MATH["smartfed"][1])
    assert row.verdict == claims.HOLDS and f"= {per_round:.2f}×" in row.figure[-1]
    bytes_ratio = 4 * sum(CN_MATH["fedit"][1]) / (1 * sum(CN_MATH["smartfed"][1]))
    assert any(f.endswith(f"= {bytes_ratio:.2f}×") for f in row.figure)
    assert _row(rows, "lower communication", "math_code").verdict == claims.PARTLY

    # 4. Energy: per run and to target from the seed runs' summary.json and metrics.jsonl.
    row = _row(rows, "less energy", "cn_math")
    per_run = CN_MATH["fedit"][2] / CN_MATH["smartfed"][2]
    to_target = 4 * CN_MATH["fedit"][2] / (1 * CN_MATH["smartfed"][2])
    assert row.verdict == claims.HOLDS
    assert f"= {per_run:.2f}×" in row.figure[0] and f"= {to_target:.2f}×" in row.figure[1]
    row = _row(rows, "less energy", "math_code")
    assert row.verdict == claims.NOT  # 0.5× per run, and never at the targets
    assert f"= {MATH_CODE['fedit'][2] / MATH_CODE['smartfed'][2]:.2f}×" in row.figure[0]

    # 5. Router: 500 / 1e6 = 0.05 % holds; 5,000 / 1e6 = 0.5 % does not; 5,000 / 1e7 holds.
    routers = [r for r in rows if "tiny router" in r.claim]
    assert [r.verdict for r in routers] == [claims.HOLDS, claims.HOLDS, claims.NOT, claims.HOLDS]
    assert "500 trained / 1,000,000 base = 0.0500%" in routers[0].figure[0]

    # 6. Data: the smartfed_data10 folder, better than FedIT; SmartFed on all of it beside.
    row = _row(rows, "10% of the training data", "cn_math")
    assert row.verdict == claims.HOLDS and "10% of the data 0.9500" in row.figure[0]
    assert "SmartFed on all the data 0.9000" in row.figure[1]
    # The protocol runs on cn_math only: no math_code row that would stay "not measured" forever.
    assert not [r for r in rows if "10% of the training data" in r.claim and r.task == "math_code"]

    # Extra: the stronger pool, on cn_math only.
    assert _row(rows, "stronger pool", "cn_math").verdict == "better"
    assert _row(rows, "stronger pool", "math_code").verdict == claims.MISSING


def test_data_tie_and_missing_inputs(claims, tmp_path):
    results = tmp_path / "results"
    _data_limited(results, data10_final=0.99)  # within the spreads of FedIT's 1.0
    rows = _rows(claims, results)
    assert _row(rows, "10% of the training data", "cn_math").verdict == f"{claims.NOT} (tie)"
    for claim in ("10.21%", "convergence", "communication", "energy", "stronger pool"):
        for task in claims.TASKS:
            row = _row(rows, claim, task)
            assert row.verdict == claims.MISSING, (claim, task)
            assert any("reference.sh" in c or "pool_eval.sh" in c for c in row.commands)


def test_to_target_cases(claims):
    show = str
    assert claims.to_target("x", 4, 2, 4, 3.95, show).verdict == claims.PARTLY  # 2x
    assert claims.to_target("x", 4, 1, 4, 3.95, show).verdict == claims.HOLDS  # 4x
    assert claims.to_target("x", 2, 2, 4, 3.95, show).verdict == claims.NOT  # 1x
    assert claims.to_target("x", None, 1, 4, 3.95, show).verdict == claims.HOLDS  # > 4x
    assert claims.to_target("x", None, 2, 4, 3.95, show).verdict == claims.PARTLY  # > 2x
    assert claims.to_target("x", 3, 0, 4, 3.95, show).verdict == claims.HOLDS  # at round 0
    assert claims.to_target("x", None, None, 4, 3.95, show).verdict is None
    assert claims.combine([claims.Measure("", claims.HOLDS), claims.Measure("", claims.NOT)]) == (
        claims.PARTLY
    )


def test_main_writes_page(claims, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setattr(claims, "dry_run_plan", _planner(claims))

    def failing(overrides):
        raise ValueError("no config.json there")

    rows, _, _ = claims.build_rows(claims.Sources(results), failing)
    router = next(r for r in rows if "tiny router" in r.claim)
    assert router.verdict == claims.MISSING and "dry run failed: no config.json" in router.figure[0]

    output = tmp_path / "out" / "claims.md"
    monkeypatch.setattr(sys, "argv", ["claims.py", "--results", str(results), "--output",
                                      str(output)])  # fmt: skip
    claims.main()
    text = output.read_text()
    assert capsys.readouterr().out == text + "\n"
    assert text.startswith("# The paper's claims at our scale") and "## How to read this" in text
    assert "tiny-model, 4 rounds" in text
    monkeypatch.setattr(sys, "argv", ["claims.py", "--results", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="no such folder"):
        claims.main()


def test_mean_energy_reads_per_round_rows(claims, tmp_path):
    runs = []
    for seed, kwh in enumerate((1e-3, 3e-3)):
        _run(tmp_path / f"seed{seed}", [2.0, 1.5, 1.0], (1, 1), kwh)
        runs.append(tmp_path / f"seed{seed}")
    assert claims._energy_at(runs, 1) == pytest.approx(statistics.mean([1e-3, 3e-3]))
    assert claims._energy_at(runs, None) == pytest.approx(statistics.mean([2e-3, 6e-3]))
    assert claims._energy_at(runs, 0) == 0.0


# The target re-run of cn_math (per entry: target loss per round, round 0 first); the runs are
# those of CN_MATH otherwise (bytes, energy). FedIT gains 1.0 on its curve: T50 = 1.5, T90 =
# 1.1, both first reached in round 4; SmartFed reaches both in round 2: 2x, where the
# in-distribution curves give 4x.
CN_MATH_TARGET = {
    "fedit": [2.0, 1.9, 1.8, 1.7, 1.0],
    "smartfed": [2.0, 1.6, 1.05, 0.95, 0.9],
    "merge": [1.95],
}


def _target(results: Path, task: str, entries: dict[str, tuple], targets: dict) -> None:
    table = import_benchmark("reference_table")
    for name in targets:
        _bench(results / "target" / task, name, {name: entries[name]}, targets)
    table.write_outputs(task, results / "target" / task, "cmd", metric="target_loss")


def test_target_metric(claims, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    _reference(results, "cn_math", CN_MATH)
    _reference(results, "math_code", MATH_CODE)
    _target(results, "cn_math", CN_MATH, CN_MATH_TARGET)  # math_code not re-run yet
    _pool_eval(results)
    _data_limited(results, data10_final=0.95)
    rows, _, _ = claims.build_rows(claims.Sources(results, "target_loss"), _planner(claims))

    fedit, smartfed = CN_MATH_TARGET["fedit"], CN_MATH_TARGET["smartfed"]
    start = fedit[0]
    targets = {"T50": start - 0.5 * (start - min(fedit)), "T90": start - 0.9 * (start - min(fedit))}
    row = _row(rows, "faster convergence", "cn_math")
    for name, target in targets.items():
        ref, mine = _first(fedit, target), _first(smartfed, target)
        assert (ref, mine) == (4, 2)
        line = next(f for f in row.figure if f.startswith(f"rounds to {name} = {target:.4f}"))
        assert line.endswith(f"= {ref / mine:.2f}×")
    assert row.verdict == claims.PARTLY  # 2x: above 1, below 3.95
    assert "in-distribution verdict → target verdict: holds → partly holds" in row.figure
    # Bytes: FedIT 4 rounds x 1000 / SmartFed 2 x 10 = 200x; per round 100x: holds.
    row = _row(rows, "lower communication", "cn_math")
    assert row.verdict == claims.HOLDS
    assert any(f.startswith("bytes to T50") and f.endswith("= 200.00×") for f in row.figure)
    assert "in-distribution verdict → target verdict: holds → holds" in row.figure
    accuracy = "\n".join(_row(rows, "10.21%", "cn_math").figure)
    assert "final target test loss: SmartFed 0.9000 ± 0.0100 (n=3) vs FedIT 1.0000 ± " in accuracy
    assert "in-distribution verdict → target verdict: cannot be measured on this model → " in (
        accuracy
    )

    # math_code has no target summary: not measured, the target re-run's commands, no arrow.
    for claim in ("convergence", "communication", "energy"):
        row = _row(rows, claim, "math_code")
        assert row.verdict == claims.MISSING
        assert not any("→" in f for f in row.figure)
    assert _row(rows, "faster convergence", "math_code").commands == [
        f"OUT={results / 'target'} benchmarks/reference.sh math_code fedit smartfed",
        ".venv/bin/python benchmarks/reference_table.py math_code --metric target_loss "
        f"--results {results / 'target'}",
    ]
    # The data-limited protocol has no target re-run: judged in-distribution, and said so.
    row = _row(rows, "10% of the training data", "cn_math")
    assert row.verdict == claims.HOLDS and "no target re-run" in row.figure[-1]

    # The page: its own file beside the target folders; the in-distribution page untouched.
    monkeypatch.setattr(claims, "dry_run_plan", _planner(claims))
    monkeypatch.setattr(sys, "argv", ["claims.py", "--results", str(results), "--metric",
                                      "target_loss"])  # fmt: skip
    claims.main()
    text = (results / "target" / "claims.md").read_text()
    assert capsys.readouterr().out == text + "\n" and not (results / "claims.md").exists()
    assert text.startswith("# The paper's claims at our scale, on the target sets")
    assert f"claims.py --metric target_loss --results {results}`" in text
    assert "T50: round-0 target loss minus 50 %" in text and "T_half" not in text
    assert "The quality figure is the final target test loss" in text


@pytest.mark.parametrize(
    ("smartfed", "fedit", "verdict"),
    [
        ((2, 3), (1, 3), "cannot be measured on this model"),  # 3 and 1 of 384: the floor
        ((120, 3), (20, 3), "holds (+26.0 points)"),
        ((70, 3), (35, 3), "partly holds (+9.1 points)"),
        ((30, 3), (35, 3), "does not hold (tie: the 95 % intervals overlap)"),
        ((10, 3), (60, 3), "does not hold (worse)"),
    ],
)
def test_accuracy_of_the_final_models(claims, tmp_path, smartfed, fedit, verdict):
    """With the final models scored (final_evals.sh), the accuracy claim compares SmartFed's
    pooled target accuracy with the most accurate baseline's by their 95 % intervals."""
    results = tmp_path / "results"
    _target(results, "cn_math", CN_MATH, CN_MATH_TARGET)
    for name, (correct, seeds) in (("smartfed", smartfed), ("fedit", fedit)):
        for seed in range(seeds):
            run = results / "target" / "cn_math" / name / name / f"seed{seed}"
            share = correct // seeds + (seed < correct % seeds)
            (run / "accuracy_target.json").write_text(json.dumps({"correct": share, "n": 128}))
    merge = results / "target" / "cn_math" / "merge" / "merge" / "seed0" / "accuracy_target.json"
    merge.write_text(json.dumps({"correct": 1, "n": 128}))  # scored once: a baseline too
    import_benchmark("reference_table").write_outputs(
        "cn_math", results / "target" / "cn_math", "cmd", metric="target_loss", with_plot=False
    )
    row = claims.claim_accuracy(
        claims.load_summary(results / "target" / "cn_math"),
        claims.Sources(results, "target_loss"),
        "cn_math",
    )
    assert row.verdict.startswith(verdict)
    assert f"SmartFed {smartfed[0]}/384 (" in row.figure[-1]
    best = "fedit" if fedit[0] / 384 > 1 / 128 else "merge"  # merge: 1/128
    assert f"most accurate baseline ({best})" in row.figure[-1]
    assert any(c.startswith("benchmarks/final_evals.sh ") for c in row.commands)
