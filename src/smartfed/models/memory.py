"""Memory of one client's training step, estimated from shapes alone (no weights, no data).

Pure arithmetic over the numbers in a model's ``config.json``, the run's dtype, batch and
sequence length, and the parameter counts of the method built on it; ``smartfed run --dry_run``
prints the result. Bytes, per client, on the device that trains:

- **weights**: the frozen base model in ``--dtype``; with ``--load_in_4bit`` the decoder's
  linear weights as NF4 (half a byte each, plus one float32 scale per 64 of them), the rest
  in ``--dtype``;
- **pool experts**: the frozen expert buffers a method keeps next to the base (``--dtype``);
- **trainable**: the method's float32 parameters, their float32 gradients and AdamW's two
  float32 moments (16 bytes per trained parameter);
- **activations**: the peak of what the forward pass keeps for the backward pass, plus the
  largest transient of the backward pass (the loss's), for a LLaMA-style decoder.

The activation model, per token, with ``s`` the bytes of ``--dtype`` (derived from which
tensors PyTorch's autograd saves; checked against measurement by ``benchmarks/memory_check.py``):

- the base weights are frozen, so a frozen linear layer keeps nothing: its input gradient needs
  only its weight. Gradients still flow through every layer, to the adapters of earlier layers;
- each RMSNorm keeps its input upcast to float32 and its inverse RMS: ``4h + 4``. The first
  layer's input norm keeps nothing (the embeddings need no gradient); the final norm counts;
- attention (SDPA with the padding mask of right-padded batches): q, k and v after the
  rotary embedding, k and v repeated to every head (transformers expands grouped KV heads when
  a mask is given), and the output: ``4·a·d·s``; the log-sum-exp ``4·a``; and the mask itself,
  ``B·T²`` values per layer, that is ``T·s`` per token;
- the SwiGLU MLP keeps gate, up and SiLU(gate): ``3·I·s``;
- each adapted matrix keeps what its :class:`AdaptedMatrix` says (router inputs, gates, ...).
  A half ``--dtype`` trains under ``torch.autocast`` (``smartfed.engine.training``), which
  keeps a half copy of each router's input; float32 runs without autocast;
- the loss keeps the float32 log-softmax of the logits, ``4V``, and its backward pass holds
  two more float32 ``(N, V)`` tensors at once (the NLL gradient and the log-softmax gradient):
  a peak of ``12V`` per token, which dominates small models with large vocabularies.

With gradient checkpointing each layer keeps only its input (``h·s``) and the backward pass
recomputes one layer at a time: the peak is the kept inputs plus the larger of the loss's
transient and one layer's activations.

Not counted: the CUDA context and allocator caches, the host-side copies (tokenised data, the
pool as read from disk), framework workspaces. They do not grow with batch × sequence length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Bytes per element of each ``--dtype``.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: NF4 (``--load_in_4bit``): half a byte per weight plus one float32 absmax per block of 64.
NF4_BYTES_PER_WEIGHT = 0.5 + 4 / 64
FLOAT32 = 4
INT64 = 8


@dataclass(frozen=True)
class DecoderShape:
    """The numbers of a LLaMA-style decoder that its memory depends on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: Any) -> DecoderShape:
        """From a transformers config (or anything with the same attribute names)."""
        heads = int(config.num_attention_heads)
        hidden = int(config.hidden_size)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        return cls(
            hidden_size=hidden,
            num_layers=int(config.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            intermediate_size=int(config.intermediate_size),
            vocab_size=int(config.vocab_size),
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    @property
    def num_parameters(self) -> int:
        """Parameters of a bias-free LLaMA decoder of this shape (tied embeddings once)."""
        h, i = self.hidden_size, self.intermediate_size
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = h * q_out + 2 * h * kv_out + q_out * h
        layer = attention + 3 * h * i + 2 * h  # + two RMSNorm weights
        embeddings = self.vocab_size * h * (1 if self.tied_embeddings else 2)
        return self.num_layers * layer + embeddings + h  # + the final norm

    @property
    def num_linear_weights(self) -> int:
        """Weights of the decoder layers' linear projections (what NF4 quantises)."""
        h, i = self.hidden_size, self.intermediate_size
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return self.num_layers * (h * q_out + 2 * h * kv_out + q_out * h + 3 * h * i)


#: Matrices that read the same input tensor: the attention input and the MLP input.
INPUT_GROUPS = {"q_proj": "attention", "k_proj": "attention", "v_proj": "attention",
                "gate_proj": "mlp", "up_proj": "mlp"}  # fmt: skip


def input_group(module_name: str) -> str:
    """Which input tensor a matrix reads: the q/k/v of one layer share one, its gate/up share
    one, any other matrix has its own (``model.layers.3.self_attn.q_proj`` ->
    ``model.layers.3.self_attn.attention``)."""
    parent, _, short = module_name.rpartition(".")
    return f"{parent}.{INPUT_GROUPS.get(short, short)}"


@dataclass(frozen=True)
class AdaptedMatrix:
    """What the adapter on one matrix keeps for the backward pass, per token.

    ``keeps_input``: a trained weight reads the matrix's input (a router, a trained LoRA A), so
    autograd keeps that input: under float32 the input itself (one tensor for every matrix of
    its :func:`input_group`); under a half ``--dtype`` the copy autocast makes for each matrix's
    float32 weight, in the half dtype.
    """

    name: str  # module name in the model, e.g. model.layers.0.self_attn.q_proj
    in_features: int
    keeps_input: bool
    dtype_values: int = 0  # values kept in --dtype (e.g. expert projections A·x and gates)
    float32_values: int = 0  # values kept in float32 (router probabilities, LoRA's A·x)
    int64_values: int = 0  # top-k indices


@dataclass(frozen=True)
class ActivationEstimate:
    """Peak activation bytes of one training step, split by where they come from."""

    layers: int  # norms, attention and MLP of the decoder layers (or their checkpoints)
    adapters: int  # what the adapted matrices keep
    loss: int  # the final norm, the logits' loss and its backward transient
    # Gradient checkpointing: how much one recomputed layer (with its adapters) exceeds the
    # loss's transient, which is gone by the time the first layer is recomputed.
    recomputed_layer: int = 0

    @property
    def total(self) -> int:
        return self.layers + self.adapters + self.loss + self.recomputed_layer


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one client needs to train, per part; :attr:`total` is their sum."""

    weights: int
    pool_experts: int
    trainable: int  # float32 parameters
    gradients: int
    optimizer: int  # AdamW moments
    activations: ActivationEstimate
    notes: tuple[str, ...] = field(default=())

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.pool_experts
            + self.trainable
            + self.gradients
            + self.optimizer
            + self.activations.total
        )


def adapter_bytes_per_token(adapted: Sequence[AdaptedMatrix], dtype_bytes: int) -> int:
    """Per token: what the adapted matrices keep, all layers together."""
    total = 0
    shared_inputs: set[str] = set()
    for matrix in adapted:
        if matrix.keeps_input:
            group = input_group(matrix.name)
            if dtype_bytes != FLOAT32:  # autocast casts each matrix's input on its own
                total += dtype_bytes * matrix.in_features
            elif group not in shared_inputs:  # the float32 input itself, once per group
                shared_inputs.add(group)
                total += FLOAT32 * matrix.in_features
        total += dtype_bytes * matrix.dtype_values
        total += FLOAT32 * matrix.float32_values + INT64 * matrix.int64_values
    return total


def layer_activation_bytes(shape: DecoderShape, dtype_bytes: int, seq_len: int) -> int:
    """Per token: what one decoder layer of the frozen base keeps (no adapters)."""
    norms = 2 * (FLOAT32 * shape.hidden_size + FLOAT32)
    attention = (
        4 * shape.num_heads * shape.head_dim * dtype_bytes  # q, k, v (repeated), output
        + FLOAT32 * shape.num_heads  # log-sum-exp
        + dtype_bytes * seq_len  # this token's row of the (B, 1, T, T) mask
    )
    mlp = 3 * shape.intermediate_size * dtype_bytes
    return norms + attention + mlp


def loss_peak_bytes(shape: DecoderShape) -> int:
    """Per token: the float32 log-softmax kept, plus the two float32 gradients of its backward."""
    return 3 * FLOAT32 * shape.vocab_size


def activation_estimate(
    shape: DecoderShape,
    *,
    dtype_bytes: int,
    batch_size: int,
    seq_len: int,
    adapted: Sequence[AdaptedMatrix] = (),
    gradient_checkpointing: bool = False,
) -> ActivationEstimate:
    """Peak activation bytes of one forward + backward pass over a ``batch_size × seq_len``
    batch (see the module docstring for what is counted); ``adapted``: every adapted matrix
    of the model, all layers."""
    tokens = batch_size * seq_len
    per_layer = layer_activation_bytes(shape, dtype_bytes, seq_len)
    adapters = adapter_bytes_per_token(adapted, dtype_bytes)
    # The first input norm keeps nothing; the final norm keeps its float32 input.
    loss = tokens * (loss_peak_bytes(shape) + FLOAT32 * shape.hidden_size + FLOAT32)
    if not gradient_checkpointing:
        return ActivationEstimate(
            layers=tokens * shape.num_layers * per_layer
            - tokens * (FLOAT32 * shape.hidden_size + FLOAT32),
            adapters=tokens * adapters,
            loss=loss,
        )
    kept = tokens * shape.num_layers * shape.hidden_size * dtype_bytes
    one_layer = tokens * (per_layer + adapters // shape.num_layers)
    # The loss's backward ends before the first layer is recomputed: the larger of the two.
    return ActivationEstimate(
        layers=kept,
        adapters=0,
        loss=loss,
        recomputed_layer=max(0, one_layer - tokens * loss_peak_bytes(shape)),
    )


def estimate_memory(
    shape: DecoderShape,
    *,
    dtype: str,
    batch_size: int,
    seq_len: int,
    base_parameters: int,
    trainable_parameters: int,
    pool_expert_parameters: int = 0,
    adapted: Sequence[AdaptedMatrix] = (),
    gradient_checkpointing: bool = False,
    load_in_4bit: bool = False,
) -> MemoryEstimate:
    """The memory one client needs to train: weights, trained state and peak activations.

    ``base_parameters`` are the frozen base model's (tied embeddings once),
    ``pool_expert_parameters`` the frozen expert values a method keeps in ``dtype``,
    ``trainable_parameters`` the float32 ones it trains.
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    dtype_bytes = DTYPE_BYTES[dtype]
    notes: list[str] = []
    if load_in_4bit:
        linear = min(shape.num_linear_weights, base_parameters)
        weights = round(linear * NF4_BYTES_PER_WEIGHT) + (base_parameters - linear) * dtype_bytes
        notes.append("4-bit: decoder linear weights as NF4 (0.5 B + a float32 scale per 64)")
    else:
        weights = base_parameters * dtype_bytes
    return MemoryEstimate(
        weights=weights,
        pool_experts=pool_expert_parameters * dtype_bytes,
        trainable=FLOAT32 * trainable_parameters,
        gradients=FLOAT32 * trainable_parameters,
        optimizer=2 * FLOAT32 * trainable_parameters,
        activations=activation_estimate(
            shape,
            dtype_bytes=dtype_bytes,
            batch_size=batch_size,
            seq_len=seq_len,
            adapted=adapted,
            gradient_checkpointing=gradient_checkpointing,
        ),
        notes=tuple(notes),
    )


def format_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``: binary units, three significant digits."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def breakdown_json(estimate: MemoryEstimate) -> Mapping[str, int]:
    """The estimate as plain numbers (bytes), activations split by source."""
    acts = estimate.activations
    return {
        "weights": estimate.weights,
        "pool_experts": estimate.pool_experts,
        "trainable_parameters": estimate.trainable,
        "gradients": estimate.gradients,
        "optimizer_AdamW": estimate.optimizer,
        "activations": acts.total,
        "activations_layers": acts.layers,
        "activations_adapters": acts.adapters,
        "activations_loss": acts.loss,
        "activations_recomputed_layer": acts.recomputed_layer,
        "total": estimate.total,
    }
