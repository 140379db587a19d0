"""Score a finished run with EleutherAI's lm-evaluation-harness (``smartfed lm-eval``).

The run is loaded by :func:`smartfed.hf.load_run` (the base ``PreTrainedModel`` with the run's
layers in it) and handed to lm-eval's ``HFLM`` as an instantiated model, so every lm-eval task
(hub tasks on a machine that reaches the hub, or local YAML tasks through ``include_path``)
scores exactly the model the run produced.

**Chat template: applied by default.** SmartFed trains and evaluates every method with the
tokenizer's chat template (the prompt is the user turn). lm-eval's own default is off; SmartFed
pins it on (``apply_chat_template=True``, few-shot examples as a multi-turn conversation) so the
scores measure the model as it was trained; ``chat_template=False`` gives lm-eval's plain
prompts. The choice is recorded in the written JSON (``smartfed.chat_template``).

**Code execution.** Tasks such as ``humaneval`` and ``mbpp`` run the model's programs with
lm-eval's (Hugging Face ``evaluate``'s) ``code_eval``, outside SmartFed's sandbox
(:mod:`smartfed.evaluation.sandbox`): no resource limits, no isolation. lm-eval refuses them
unless ``confirm_run_unsafe_code`` is given; SmartFed passes that opt-in through unchanged and
then also sets ``HF_ALLOW_CODE_EVAL=1``, which ``code_eval`` requires.

lm-eval is an optional dependency (``pip install 'smartfed[lm_eval]'``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from smartfed import __version__
from smartfed.errors import ConfigError
from smartfed.utils.io import write_text_atomic

#: lm-eval's task names for the paper's benchmarks (they need the hub for their data).
PAPER_TASKS = {
    "gsm8k": "gsm8k",
    "mgsm_zh": "mgsm_native_cot_zh",
    "humaneval": "humaneval",
    "mbpp": "mbpp",
}
INSTALL_HINT = "pip install 'smartfed[lm_eval]'"
RESULTS_FOLDER = "lm_eval"
LINES_FILE = "lm_eval.jsonl"


def require_lm_eval() -> None:
    """Refuse in one line when lm-eval (with its Hugging Face backend) is missing."""
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"smartfed lm-eval needs lm-evaluation-harness, which is not installed ({exc}): "
            f"{INSTALL_HINT}"
        ) from None


def task_manager(include_path: list[str] | None) -> Any:
    from lm_eval.tasks import TaskManager

    for path in include_path or []:
        if not Path(path).exists():
            raise ConfigError(f"--include_path {path}: no such file or folder")
    return TaskManager(include_path=include_path or None)


def check_tasks(tasks: list[str], manager: Any, confirm_run_unsafe_code: bool) -> None:
    """Unknown task names, and code-execution tasks without the opt-in, in one line, before
    the model or any data loads (lm-eval checks groups' members itself, later)."""
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known and not Path(t).exists()]
    if unknown:
        raise ConfigError(
            f"unknown lm-eval task(s) {', '.join(unknown)} (`lm-eval ls tasks` lists them; a "
            "local YAML task needs --include_path FOLDER)"
        )
    index = getattr(manager, "task_index", {})
    unsafe = [t for t in tasks if t in index and (index[t].cfg or {}).get("unsafe_code")]
    if unsafe and not confirm_run_unsafe_code:
        raise ConfigError(_unsafe_message(", ".join(unsafe)))


def _unsafe_message(tasks: str) -> str:
    return (
        f"lm-eval task(s) {tasks} execute model-generated code with lm-eval's code_eval, outside "
        "SmartFed's sandbox (no isolation, no limits): pass --confirm_run_unsafe_code to accept"
    )


def run_lm_eval(
    run_dir: str,
    tasks: list[str],
    *,
    include_path: list[str] | None = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 8,
    chat_template: bool = True,
    fewshot_as_multiturn: bool | None = None,
    system_instruction: str | None = None,
    gen_kwargs: str | None = None,
    confirm_run_unsafe_code: bool = False,
    log_samples: bool = False,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    model_name_or_path: str | None = None,
    pool_manifest: str | None = None,
) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate`` on the run's model; write its JSON into the run
    directory (``lm_eval/<tasks>.json``) and one SmartFed line per task (``lm_eval.jsonl``).

    Returns ``{"results": lm-eval's output, "lines": [...], "path": the JSON file}``."""
    require_lm_eval()
    if not tasks:
        raise ConfigError("--tasks names no task")
    manager = task_manager(include_path)
    check_tasks(tasks, manager, confirm_run_unsafe_code)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import handle_non_serializable

    from smartfed.hf import load_run

    model, tokenizer = load_run(
        run_dir,
        device=device,
        dtype=dtype,
        model_name_or_path=model_name_or_path,
        pool_manifest=pool_manifest,
    )
    if confirm_run_unsafe_code:  # the user opted in; code_eval checks this variable too
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    multiturn = chat_template if fewshot_as_multiturn is None else fewshot_as_multiturn
    started = time.perf_counter()
    try:
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            apply_chat_template=chat_template,
            fewshot_as_multiturn=multiturn,
            system_instruction=system_instruction,
            gen_kwargs=gen_kwargs,
            confirm_run_unsafe_code=confirm_run_unsafe_code,
            log_samples=log_samples,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except ValueError as exc:
        if "marked as unsafe" in str(exc):  # a member of a group: lm-eval's own check
            raise ConfigError(_unsafe_message(f"in {', '.join(tasks)}")) from None
        raise
    seconds = time.perf_counter() - started
    description = dict(getattr(model, "smartfed_run", {}))
    output["smartfed"] = {
        "version": __version__,
        "run": description,
        "chat_template": chat_template,
        "fewshot_as_multiturn": multiturn,
        "seconds": round(seconds, 2),
    }
    text = json.dumps(output, indent=2, default=handle_non_serializable, ensure_ascii=False)
    name = "+".join(Path(t).stem for t in tasks)
    path = Path(run_dir) / RESULTS_FOLDER / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text + "\n")
    lines = result_lines(output, chat_template, str(path))
    with (Path(run_dir) / LINES_FILE).open("a", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return {"results": output, "lines": lines, "path": path}


def result_lines(output: dict[str, Any], chat_template: bool, path: str) -> list[dict[str, Any]]:
    """One record per task: its first metric (lm-eval's order), stderr, n, settings."""
    lines = []
    for task, metrics in output.get("results", {}).items():
        # Metric keys are "METRIC,FILTER"; "alias", "name", "sample_len" are not metrics.
        values = {
            k: v
            for k, v in metrics.items()
            if "," in k and "_stderr," not in k and isinstance(v, (int, float))
        }
        if not values:
            continue
        key = next(iter(values))
        metric, _, lm_filter = key.partition(",")
        stderr = metrics.get(f"{metric}_stderr,{lm_filter}")
        n = (output.get("n-samples", {}).get(task) or {}).get("effective")
        lines.append(
            {
                "benchmark": f"lm_eval:{task}",
                "metric": metric,
                "filter": lm_filter or None,
                "value": values[key],
                "stderr": stderr if isinstance(stderr, (int, float)) else None,
                "n": n,
                "num_fewshot": (output.get("n-shot") or {}).get(task),
                "chat_template": chat_template,
                "results_file": path,
            }
        )
    return lines


def format_line(line: dict[str, Any]) -> str:
    """``lm_eval:TASK: METRIC VALUE ± STDERR (n = N, k-shot, chat template on)``."""
    stderr = line["stderr"]
    spread = f" ± {stderr:.4f}" if isinstance(stderr, float) and math.isfinite(stderr) else ""
    shots = f", {line['num_fewshot']}-shot" if line.get("num_fewshot") is not None else ""
    chat = "on" if line["chat_template"] else "off"
    return (
        f"{line['benchmark']}: {line['metric']} {line['value']:.4f}{spread} "
        f"(n = {line['n']}{shots}, chat template {chat})"
    )
