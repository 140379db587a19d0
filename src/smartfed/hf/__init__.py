"""Use a finished run the way Hugging Face users do: plain ``transformers`` models and PEFT folders.

- :func:`load_run`: a run directory -> ``(model, tokenizer)``, the base ``PreTrainedModel`` with
  the method's layers injected and the run's final state applied (``generate``, ``pipeline``).
- :func:`export_run`: a run -> a PEFT-layout folder (a standard LoRA for fresh-LoRA methods and
  for merge / LoRAHub; a self-contained routed folder for SmartFed and MoLE), with the tokenizer
  and a model card.
- :func:`from_pretrained`: base model + an exported routed folder -> the run's model, with no
  pool manifest and no run directory.
"""

from smartfed.hf.export import export_run, from_pretrained
from smartfed.hf.loading import inference_model, load_run

__all__ = ["export_run", "from_pretrained", "inference_model", "load_run"]
