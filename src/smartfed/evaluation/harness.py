"""Evaluate a model on a benchmark and write the JSON result (aggregate + every item).

What can be evaluated (:func:`load_eval_target`): the base model alone, the base model with a
PEFT adapter folder, with a registered pool module, or a finished SmartFed run directory (base
model + the run's pool + its final routers and quotas). Adapters are merged into the weights
for evaluation, which is exact for LoRA and makes generation as fast as the base model.

Results are plain JSON (:func:`write_result`): ``benchmark``, ``metric``, ``value``, ``n``, what
was evaluated, the settings and timing, and ``items`` with prompt, generation, extracted answer
and correctness for generative benchmarks, or the per-example answer-token loss for ``loss``.
Which of the two evaluators runs is the benchmark's business (:mod:`.benchmarks`): call
``get_benchmark(name).evaluate(target, settings)``. The loss is computed by the engine's
:func:`smartfed.engine.evaluation.answer_token_loss`, the same code as every run's per-round
evaluation, so both report the same numbers on the same batches.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from smartfed import __version__
from smartfed.data import encode_examples, load_examples
from smartfed.data.formatting import collate
from smartfed.engine.evaluation import answer_token_loss
from smartfed.errors import ConfigError
from smartfed.evaluation.benchmarks import GenerativeBenchmark, get_benchmark
from smartfed.evaluation.generation import generate
from smartfed.evaluation.sandbox import SandboxLimits
from smartfed.utils.intervals import wilson_interval
from smartfed.utils.io import write_json_atomic


@dataclass
class EvalTarget:
    """A ready-to-run model, its tokenizer, and a JSON description of what it is."""

    model: Any
    tokenizer: Any
    description: dict[str, Any] = field(default_factory=dict)


def load_eval_target(
    model_name_or_path: str | None = None,
    *,
    adapter: str | None = None,
    pool_module: str | None = None,
    run_dir: str | None = None,
    pool_manifest: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> EvalTarget:
    """Load one of: base model, base + PEFT adapter, base + pool module, or a run directory.

    ``device``: a ``--device`` spec (default auto); ``dtype``: the base model's precision
    (default: a run's own ``--dtype``, else float32)."""
    from smartfed.models import DEFAULT_MODEL, load_base_model, resolve_device
    from smartfed.models.device import warn_if_slow_half_on_cpu

    chosen = [name for name, v in (("--adapter", adapter), ("--pool_module", pool_module),
                                   ("--run", run_dir)) if v]  # fmt: skip
    if len(chosen) > 1:
        raise ConfigError(f"give at most one of --adapter, --pool_module, --run (got {chosen})")
    if run_dir:
        return _load_run(run_dir, model_name_or_path, pool_manifest, device, dtype)

    lora = None
    if adapter or pool_module:
        from smartfed.pool import PoolRegistry, load_pool_module

        # Before the base model: a missing, unreadable or changed (unpinned) module fails first.
        registry = PoolRegistry.default(pool_manifest)
        item = pool_module or adapter
        lora, _ = load_pool_module(item, registry)  # validates the folder with a clear error
    target = resolve_device(device or "auto")
    warn_if_slow_half_on_cpu(target, dtype or "float32")
    loaded = load_base_model(
        model_name_or_path or DEFAULT_MODEL, dtype=dtype or "float32", device=target
    )
    description: dict[str, Any] = {
        "kind": "base",
        "base_model": loaded.source.display_name,
        "base_model_fingerprint": loaded.source.fingerprint,
        "device": str(target),
        "dtype": dtype or "float32",
    }
    model = loaded.model
    if lora is not None:
        from peft import PeftModel

        lora.validate_against(model)
        model = PeftModel.from_pretrained(model, lora.source).merge_and_unload()
        description.update(
            kind="pool_module" if pool_module else "adapter",
            adapter=pool_module or adapter,
            adapter_source=str(lora.source),
            adapter_fingerprint=lora.fingerprint(),
        )
    model.eval()
    return EvalTarget(model=model, tokenizer=loaded.tokenizer, description=description)


def _load_run(
    run_dir: str,
    model_override: str | None,
    pool_manifest: str | None,
    device: str | None,
    dtype: str | None,
) -> EvalTarget:
    from smartfed.assembly.runtime import load_finished_run

    run = load_finished_run(
        run_dir,
        model_override=model_override,
        pool_manifest=pool_manifest,
        device=device,
        dtype=dtype,
    )
    return EvalTarget(model=run.model, tokenizer=run.tokenizer, description=run.description)


def evaluate_benchmark(
    target: EvalTarget,
    benchmark: GenerativeBenchmark | str,
    *,
    limit: int | None = None,
    data_dir: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    sandbox: SandboxLimits | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate for the first ``limit`` items of a generative benchmark and score them."""
    if isinstance(benchmark, str):
        found = get_benchmark(benchmark)
        if not isinstance(found, GenerativeBenchmark):
            raise ConfigError(f"benchmark {benchmark!r} is not generative ({found.kind})")
        benchmark = found
    examples = load_examples(benchmark.dataset, benchmark.split, data_dir=data_dir, limit=limit)
    prompts = [benchmark.prompt(ex) for ex in examples]
    budget = max_new_tokens or benchmark.max_new_tokens
    started = time.perf_counter()
    generations = generate(
        target.model,
        target.tokenizer,
        prompts,
        max_new_tokens=budget,
        batch_size=batch_size,
        stop=benchmark.stop,
        progress=progress,
        description=benchmark.name,
    )
    generation_s = time.perf_counter() - started
    limits = sandbox or SandboxLimits()
    items = []
    for index, (example, prompt, text) in enumerate(
        zip(tqdm(examples, desc="scoring", disable=not progress), prompts, generations, strict=True)
    ):
        score = benchmark.score(example, text, limits)
        items.append(
            {
                "index": index,
                "prompt": prompt,
                "generation": text,
                "extracted": score.extracted,
                "gold": example.meta.get("answer", example.meta.get("task_id")),
                "correct": score.correct,
                **({"detail": score.detail} if score.detail else {}),
            }
        )
    correct = sum(item["correct"] for item in items)
    return {
        "benchmark": benchmark.name,
        "description": benchmark.description,
        "metric": benchmark.metric,
        "value": correct / len(items) if items else None,
        "correct": correct,
        "n": len(items),
        "interval_95": wilson_interval(correct, len(items)),
        "dataset": benchmark.dataset,
        "split": benchmark.split,
        "limit": limit,
        "settings": {"max_new_tokens": budget, "batch_size": batch_size, "decoding": "greedy"},
        "model": target.description,
        "seconds": {
            "generation": round(generation_s, 2),
            "total": round(time.perf_counter() - started, 2),
        },
        "smartfed_version": __version__,
        "items": items,
    }


def evaluate_loss(
    target: EvalTarget,
    dataset: str,
    split: str = "test",
    *,
    limit: int | None = None,
    data_dir: str | None = None,
    batch_size: int = 8,
    max_seq_len: int = 512,
    progress: bool = True,
    name: str = "loss",
    description: str = "mean answer-token loss (prompt masked) on a held-out split",
) -> dict[str, Any]:
    """Mean answer-token loss and perplexity on a held-out split (prompt tokens masked out).

    ``value`` is the loss summed over every answer token, then divided by their number: what
    :func:`smartfed.engine.evaluation.evaluate_loss` returns as ``eval_loss`` on the same batches.
    """
    examples = load_examples(dataset, split, data_dir=data_dir, limit=limit)
    if not examples:
        raise ConfigError(f"{dataset}/{split}: no examples")
    try:
        encoded = encode_examples(target.tokenizer, examples, max_seq_len)
    except ConfigError:
        raise ConfigError(f"{dataset}/{split}: no example fits max_seq_len {max_seq_len}") from None
    # Shortest first, as the engine's evaluation batches them (less padding; the same numbers).
    rows = sorted(
        zip(encoded.kept, encoded.encoded, strict=True), key=lambda pair: len(pair[1]["input_ids"])
    )
    pad_id = target.tokenizer.pad_token_id or 0
    started = time.perf_counter()
    model = target.model
    was_training = model.training
    model.eval()
    items, total_loss, total_tokens = [], 0.0, 0
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc=f"loss {dataset}/{split}",
                          disable=not progress):  # fmt: skip
            chunk = rows[start : start + batch_size]
            loss = answer_token_loss(model, collate([row for _, row in chunk], pad_id))
            total_loss += float(loss.total)
            total_tokens += loss.tokens
            for (index, _), loss_sum, tokens in zip(
                chunk, loss.row_sums.tolist(), loss.row_tokens.tolist(), strict=True
            ):
                items.append({"index": index, "tokens": tokens, "loss": loss_sum / max(tokens, 1)})
    finally:
        model.train(was_training)
    items.sort(key=lambda item: item["index"])  # file order
    mean = total_loss / total_tokens
    return {
        "benchmark": name,
        "description": description,
        "metric": "loss",
        "value": mean,
        "perplexity": math.exp(min(mean, 50.0)),
        "tokens": total_tokens,
        "n": len(items),
        "skipped": len(examples) - len(items),
        # Items whose answer was cut at max_seq_len: their loss covers only what fits.
        "truncated": encoded.truncated,
        "dataset": dataset,
        "split": split,
        "limit": limit,
        "settings": {"max_seq_len": max_seq_len, "batch_size": batch_size},
        "model": target.description,
        "seconds": {"total": round(time.perf_counter() - started, 2)},
        "smartfed_version": __version__,
        "items": items,
    }


def write_result(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    return path
