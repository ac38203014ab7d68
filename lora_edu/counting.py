"""Counting parameters and bytes: what LoRA saves, for one matrix and for whole published models.

Explained in notebook 03_parameter_savings.

- One ``d × k`` weight matrix: full fine-tuning trains ``d·k`` numbers; LoRA trains ``B`` ``(d, r)`` and
  ``A`` ``(r, k)``, that is ``r·(d + k)`` numbers. LoRA stores fewer numbers while ``r < d·k / (d + k)``.
- Whole models from their published shapes (`GPT2_SMALL`, `LLAMA_7B`, `GPT3_175B`): total parameters and the
  parameters LoRA trains when it adapts some of the linear layers.
- Training memory (weights, gradients, Adam states) and checkpoint sizes, in fp32 and bf16 mixed precision.
  Activations are counted apart (`activation_bytes`): they grow with batch size and sequence length.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import _validate
from .linalg import check_rank

__all__ = ["full_params", "lora_params", "savings_ratio", "break_even_rank", "TransformerShape", "GPT2_SMALL",
           "LLAMA_7B", "GPT3_175B", "PUBLISHED_MODELS", "linear_layer_shapes", "count_model_params",
           "lora_trainable_params", "BYTES_PER_VALUE", "PRECISIONS", "training_memory_bytes", "checkpoint_bytes",
           "activation_bytes", "format_count", "format_bytes", "LLAMA2_7B", "LLAMA2_13B", "LLAMA2_70B",
           "LLAMA_65B", "LLAMA_FAMILY", "FINETUNING_METHODS", "FINETUNING_PRECISIONS", "DEFAULT_PRECISION",
           "finetuning_memory_bytes"]


def full_params(d: int, k: int) -> int:
    """Numbers in a dense ``d × k`` matrix (what full fine-tuning trains in it): ``d·k``.
    See notebook 03_parameter_savings."""
    return _validate.integer("d", d, 1) * _validate.integer("k", k, 1)


def lora_params(d: int, k: int, r: int) -> int:
    """Numbers in LoRA's factors for a ``d × k`` matrix: ``B`` ``(d, r)`` plus ``A`` ``(r, k)`` = ``r·(d + k)``.

    ``r`` must be between 1 and ``min(d, k)`` (a product of rank above ``min(d, k)`` does not exist).
    See notebook 03_parameter_savings.
    """
    d, k = _validate.integer("d", d, 1), _validate.integer("k", k, 1)
    return check_rank(r, d, k) * (d + k)


def savings_ratio(d: int, k: int, r: int) -> float:
    """How many times fewer numbers LoRA trains than the dense matrix: ``d·k / (r·(d + k))``.

    Example: ``d = k = 2500, r = 8`` gives 6,250,000 / 40,000 = 156.25. See notebook 03_parameter_savings."""
    return full_params(d, k) / lora_params(d, k, r)


def break_even_rank(d: int, k: int) -> float:
    """The rank at which LoRA stores as many numbers as the dense matrix: ``r* = d·k / (d + k)``.

    LoRA saves parameters exactly when ``r < r*``; for a square ``d × d`` matrix ``r* = d / 2``.
    See notebook 03_parameter_savings."""
    d, k = _validate.integer("d", d, 1), _validate.integer("k", k, 1)
    return d * k / (d + k)


@dataclass(frozen=True)
class TransformerShape:
    """The published shape of a decoder-only transformer, enough to count its parameters.

    ``mlp`` is ``"gelu"`` (two matrices: ``d_model → d_ff → d_model``) or ``"swiglu"`` (three: gate, up,
    down); ``norm`` is ``"layernorm"`` (weight and bias) or ``"rmsnorm"`` (weight only); ``n_positions`` is
    the size of a learned position table (0 for rotary embeddings); ``tied_embeddings`` means the output
    layer reuses the token embedding. ``source`` says where the numbers come from.
    """

    name: str
    n_layers: int
    d_model: int
    d_ff: int
    vocab_size: int
    n_positions: int
    mlp: str
    norm: str
    biases: bool
    tied_embeddings: bool
    source: str
    n_heads: int = 0
    n_kv_heads: int = 0

    @property
    def kv_dim(self) -> int:
        """The output width of ``k`` and ``v``: ``d_model``, or ``d_model · n_kv_heads / n_heads`` with
        grouped-query attention."""
        if self.n_heads and self.n_kv_heads:
            return self.d_model * self.n_kv_heads // self.n_heads
        return self.d_model


GPT2_SMALL = TransformerShape(
    "GPT-2 small", n_layers=12, d_model=768, d_ff=3072, vocab_size=50257, n_positions=1024, mlp="gelu",
    norm="layernorm", biases=True, tied_embeddings=True,
    source="Radford et al. 2019, 'Language Models are Unsupervised Multitask Learners', Table 2 and Sec. 2.3 "
           "(12 layers, d_model 768, vocabulary 50,257, context 1024); d_ff = 4·d_model as in the released "
           "config (Hugging Face 'gpt2': n_layer 12, n_embd 768, n_positions 1024, vocab_size 50257)")
LLAMA_7B = TransformerShape(
    "LLaMA-7B", n_layers=32, d_model=4096, d_ff=11008, vocab_size=32000, n_positions=0, mlp="swiglu",
    norm="rmsnorm", biases=False, tied_embeddings=False,
    source="Touvron et al. 2023, arXiv 2302.13971: Table 2 (6.7B: dimension 4096, 32 heads, 32 layers), "
           "Sec. 2.2 (SwiGLU with hidden size 2/3·4d; RMSNorm; rotary positions); the paper gives no "
           "vocabulary size: vocab_size 32000 and intermediate_size 11008 are from the released tokenizer "
           "and config (Hugging Face LlamaConfig for the 7B weights)")
GPT3_175B = TransformerShape(
    "GPT-3 175B", n_layers=96, d_model=12288, d_ff=4 * 12288, vocab_size=50257, n_positions=2048, mlp="gelu",
    norm="layernorm", biases=True, tied_embeddings=True,
    source="Brown et al. 2020, arXiv 2005.14165: Table 2.1 (96 layers, d_model 12288, 96 heads), "
           "Sec. 2.1 text (context window n_ctx = 2048; d_ff = 4·d_model; the same model and architecture "
           "as GPT-2, so GPT-2's 50,257-token vocabulary is assumed)")
PUBLISHED_MODELS = (GPT2_SMALL, LLAMA_7B, GPT3_175B)

# The LLaMA family for notebook 10's memory estimator (SwiGLU, RMSNorm, rotary positions, untied head, no biases).
_LLAMA = dict(n_positions=0, mlp="swiglu", norm="rmsnorm", biases=False, tied_embeddings=False, vocab_size=32000)
LLAMA2_7B = TransformerShape(
    "Llama-2-7B", n_layers=32, d_model=4096, d_ff=11008, n_heads=32, n_kv_heads=32, **_LLAMA,
    source="Touvron et al. 2023, arXiv 2307.09288 (Llama 2): the 7B model has LLaMA-7B's shape; released "
           "config (Hugging Face meta-llama/Llama-2-7b-hf: hidden_size 4096, intermediate_size 11008, "
           "32 layers, 32 heads, vocab_size 32000)")
LLAMA2_13B = TransformerShape(
    "Llama-2-13B", n_layers=40, d_model=5120, d_ff=13824, n_heads=40, n_kv_heads=40, **_LLAMA,
    source="released config (Hugging Face meta-llama/Llama-2-13b-hf: hidden_size 5120, intermediate_size "
           "13824, 40 layers, 40 heads, vocab_size 32000)")
LLAMA2_70B = TransformerShape(
    "Llama-2-70B", n_layers=80, d_model=8192, d_ff=28672, n_heads=64, n_kv_heads=8, **_LLAMA,
    source="Touvron et al. 2023, arXiv 2307.09288, Sec. 2.2 (grouped-query attention for 70B); released "
           "config (Hugging Face meta-llama/Llama-2-70b-hf: hidden_size 8192, intermediate_size 28672, "
           "80 layers, 64 heads, 8 key/value heads: k_proj and v_proj are 8192 -> 1024)")
LLAMA_65B = TransformerShape(
    "LLaMA-65B", n_layers=80, d_model=8192, d_ff=22016, n_heads=64, n_kv_heads=64, **_LLAMA,
    source="Touvron et al. 2023, arXiv 2302.13971, Table 2 (65.2B: dimension 8192, 64 heads, 80 layers); "
           "intermediate_size 22016 from the released config")
LLAMA_FAMILY = (LLAMA2_7B, LLAMA2_13B, LLAMA2_70B)


def _check_shape(shape) -> TransformerShape:
    return _validate.instance("shape", shape, TransformerShape, "a TransformerShape (e.g. lora_edu.counting.LLAMA_7B)")


def linear_layer_shapes(shape: TransformerShape) -> dict[str, tuple[int, int]]:
    """The weight matrices of one transformer block, by name, as ``(d_in, d_out)``.

    Attention: ``q``, ``k``, ``v``, ``o``, each ``d_model × d_model`` (``k`` and ``v`` narrower with
    grouped-query attention: ``(d_model, kv_dim)``). MLP: ``up`` ``(d_model, d_ff)`` and
    ``down`` ``(d_ff, d_model)``, plus ``gate`` ``(d_model, d_ff)`` for SwiGLU. (GPT-2 stores q, k, v as one
    fused ``c_attn`` of shape ``(768, 2304)``; split, it is the same three matrices.)
    See notebook 03_parameter_savings."""
    s = _check_shape(shape)
    layers = {name: (s.d_model, s.d_model if name in ("q", "o") else s.kv_dim) for name in ("q", "k", "v", "o")}
    if s.mlp == "swiglu":
        layers["gate"] = (s.d_model, s.d_ff)
    layers["up"] = (s.d_model, s.d_ff)
    layers["down"] = (s.d_ff, s.d_model)
    return layers


def count_model_params(shape: TransformerShape) -> int:
    """All parameters of a model with this shape: embeddings, every block's linear layers (with biases
    if it has them) and norms, the final norm, and the output layer unless it is tied to the embedding.
    See notebook 03_parameter_savings."""
    s = _check_shape(shape)
    norm = 2 * s.d_model if s.norm == "layernorm" else s.d_model
    block = 2 * norm
    for d_in, d_out in linear_layer_shapes(s).values():
        block += d_in * d_out + (d_out if s.biases else 0)
    embeddings = s.vocab_size * s.d_model + s.n_positions * s.d_model
    head = 0 if s.tied_embeddings else s.vocab_size * s.d_model
    return embeddings + s.n_layers * block + norm + head


def lora_trainable_params(shape: TransformerShape, r: int, targets=("q", "v")) -> int:
    """Parameters LoRA trains when it adapts the matrices named in ``targets`` in every block:
    ``n_layers · Σ_targets r·(d_in + d_out)``. ``targets="all"`` adapts every linear layer of the blocks.
    Each name may appear once (a matrix is adapted once, however often it is listed).
    See notebook 03_parameter_savings."""
    layers = linear_layer_shapes(shape)
    if targets == "all":
        targets = tuple(layers)
    if isinstance(targets, str) or not targets:
        raise ValueError(f"targets must be a non-empty list of names from {sorted(layers)} or 'all', got {targets!r}")
    duplicates = sorted({t for t in targets if list(targets).count(t) > 1})
    if duplicates:
        raise ValueError(f"targets must name each layer once, but {duplicates} appear more than once in {targets!r}")
    unknown = [t for t in targets if t not in layers]
    if unknown:
        raise ValueError(f"targets {unknown} are not layers of {shape.name}; allowed: {sorted(layers)} or 'all'")
    return shape.n_layers * sum(lora_params(*layers[t], r) for t in targets)


BYTES_PER_VALUE = {"fp32": 4, "bf16": 2, "fp16": 2}
PRECISIONS = ("fp32", "bf16-mixed")


def training_memory_bytes(total_params: int, trainable_params: int, precision: str = "fp32") -> dict[str, int]:
    """Bytes for weights, gradients and Adam states when training ``trainable_params`` of ``total_params``.

    - ``"fp32"``: every weight 4 B; each trainable parameter adds a 4 B gradient and Adam's two 4 B
      moments (m, v): 16 B per trainable parameter in all.
    - ``"bf16-mixed"``: every weight 2 B (bf16); each trainable parameter adds a 2 B gradient, a 4 B fp32
      master copy and 8 B of Adam moments: again 16 B per trainable parameter, but 2 B per frozen one.

    Full fine-tuning is ``trainable_params == total_params``. Returns ``weights``, ``gradients``,
    ``master_weights``, ``optimizer`` and ``total``. Activations are not included.
    See notebook 03_parameter_savings."""
    total = _validate.integer("total_params", total_params, 1)
    trainable = _validate.integer("trainable_params", trainable_params, 1)
    if trainable > total:
        raise ValueError(f"trainable_params ({trainable}) must not exceed total_params ({total})")
    fp32 = _validate.choice("precision", precision, PRECISIONS) == "fp32"
    weight_bytes = 4 if fp32 else 2  # bf16-mixed: bf16 weights and gradients, an fp32 master copy
    parts = {"weights": weight_bytes * total, "gradients": weight_bytes * trainable,
             "master_weights": 0 if fp32 else 4 * trainable, "optimizer": 8 * trainable}
    parts["total"] = sum(parts.values())
    return parts


def checkpoint_bytes(params: int, dtype: str = "bf16") -> int:
    """Bytes to save ``params`` numbers in ``dtype`` (``"fp32"``, ``"bf16"`` or ``"fp16"``), file headers aside:
    ``params · BYTES_PER_VALUE[dtype]``. See notebook 03_parameter_savings."""
    params = _validate.integer("params", params, 1)
    return params * BYTES_PER_VALUE[_validate.choice("dtype", dtype, BYTES_PER_VALUE)]


def activation_bytes(shape: TransformerShape, n_heads: int, batch: int, seq_len: int) -> int:
    """Bytes of the activations one training step keeps for the backward pass, for ``batch`` sequences of
    ``seq_len`` tokens: ``n_layers · s·b·h·(34 + 5·a·s/h)`` with ``s = seq_len``, ``b = batch``, ``h = d_model``
    and ``a = n_heads`` (Korthikanti et al. 2022, arXiv 2205.05198, Section 4.1, Eq. 1).

    The formula's assumptions: 16-bit activations (1-byte dropout masks), a GPT-3-style block (attention, a
    4·h GeLU MLP, two LayerNorms, dropout), the attention scores stored (no FlashAttention), no activation
    checkpointing, no tensor or sequence parallelism. Embeddings and the output layer are left out. For
    other blocks (LLaMA's SwiGLU MLP, no dropout) it is an estimate of the size, not an exact count.
    See notebook 03_parameter_savings."""
    s = _check_shape(shape)
    a = _validate.integer("n_heads", n_heads, 1)
    b = _validate.integer("batch", batch, 1)
    seq = _validate.integer("seq_len", seq_len, 1)
    per_layer = 34 * seq * b * s.d_model + 5 * a * seq * seq * b  # s·b·h·(34 + 5as/h), kept in integers
    return s.n_layers * per_layer


FINETUNING_METHODS = ("full", "lora", "qlora")


FINETUNING_PRECISIONS = {  # bytes per trainable parameter: (weight, gradient, optimizer)
    "mixed": (2, 2, 12),      # bf16 weight and gradient, fp32 master copy + Adam's two fp32 moments
    "bf16": (2, 2, 8),        # the weight trained in bf16 (no master copy), Adam's moments in fp32
    "bf16-true": (2, 2, 4),   # everything in bf16, Adam's moments too
}
DEFAULT_PRECISION = {"full": "mixed", "lora": "mixed", "qlora": "bf16"}


def finetuning_memory_bytes(shape: TransformerShape, method: str, r: int = 8, targets=("q", "v"), batch: int = 1,
                            seq_len: int = 512, checkpointing: bool = False, precision: str | None = None) -> dict[str, int]:
    """An estimate of the GPU memory a fine-tuning step needs, by part, for a model of ``shape``.

    ``method``: ``"full"`` (every parameter trains, bf16 mixed precision), ``"lora"`` (bf16 frozen base, LoRA of
    rank ``r`` on ``targets`` in every block) or ``"qlora"`` (the blocks' linear weights in NF4 with double
    quantization, ``lora_edu.quantization.bits_per_parameter(64, True)`` ≈ 4.127 bits each; embeddings, head and
    norms in bf16; LoRA as for ``"lora"``). Parts, in bytes:

    - ``weights``: frozen and trainable weights as stored (2 bytes per bf16 number);
    - ``gradients``: 2 bytes per trainable parameter (bf16);
    - ``optimizer``: per trainable parameter, by ``precision`` (`FINETUNING_PRECISIONS`): ``"mixed"``, an fp32
      master copy and Adam's two fp32 moments, 12 bytes (so 16 bytes per trainable parameter in all; PEFT's
      default fp32 adapters with fp32 gradients cost the same 16); ``"bf16"``, the weight trained in bf16 with
      no master copy and fp32 moments, 8 bytes (12 in all: QLoRA's repository casts the LoRA layers to bf16 and
      uses ``paged_adamw_32bit``); ``"bf16-true"``, bf16 moments, 4 bytes (8 in all: litgpt's
      ``--precision bf16-true``). Default (``None``): ``"mixed"`` for ``"full"`` and ``"lora"``, ``"bf16"``
      for ``"qlora"`` (`DEFAULT_PRECISION`);
    - ``activations``: what the backward pass keeps, bf16, for ``batch`` sequences of ``seq_len`` tokens, with
      fused (flash) attention, which keeps no ``seq_len²`` score matrix. Per block and token: the inputs of the
      two norms and their outputs (4·d), q, k, v and the attention output (2·d + 2·kv_dim), the MLP's inner
      activations (3·d_ff for SwiGLU: gate, up and their product; 2·d_ff for a GELU MLP) and r numbers per
      LoRA target; plus the logits (bf16, and fp32 for the loss: 6 bytes per vocabulary entry and token).
      With ``checkpointing`` only each block's input (d per token) is kept, plus one block recomputed at a
      time. The same count for all three methods: an upper bound for LoRA, whose frozen layers need not keep
      their inputs.
    - ``total``: their sum. Not counted: the CUDA context, the allocator's cache and temporary buffers.

    See notebook 10_lora_variants, which checks it against published measurements.
    """
    s = _check_shape(shape)
    method = _validate.choice("method", method, FINETUNING_METHODS)
    r = _validate.integer("r", r, 1)
    batch = _validate.integer("batch", batch, 1)
    seq_len = _validate.integer("seq_len", seq_len, 1)
    checkpointing = _validate.boolean("checkpointing", checkpointing)
    precision = DEFAULT_PRECISION[method] if precision is None else _validate.choice(
        "precision", precision, tuple(FINETUNING_PRECISIONS))
    weight_bytes, grad_bytes, optimizer_bytes = FINETUNING_PRECISIONS[precision]
    total = count_model_params(s)
    layers = linear_layer_shapes(s)
    block_linear = s.n_layers * sum(d_in * d_out for d_in, d_out in layers.values())
    adapter = 0 if method == "full" else lora_trainable_params(s, r, targets)
    trainable = total if method == "full" else adapter
    if method == "qlora":
        from .quantization import bits_per_parameter
        weights = round(block_linear * bits_per_parameter(64, double_quant=True) / 8) + 2 * (total - block_linear)
    else:
        weights = 2 * total
    weights += weight_bytes * adapter
    tokens = batch * seq_len
    n_targets = len(layers) if targets == "all" else len(targets)
    lora_acts = 0 if method == "full" else r * n_targets
    mlp_acts = (3 if s.mlp == "swiglu" else 2) * s.d_ff
    per_token_block = 4 * s.d_model + 2 * s.d_model + 2 * s.kv_dim + mlp_acts + lora_acts
    if checkpointing:
        kept = tokens * (s.n_layers * s.d_model + per_token_block)
    else:
        kept = tokens * s.n_layers * per_token_block
    parts = {"weights": weights, "gradients": grad_bytes * trainable, "optimizer": optimizer_bytes * trainable,
             "activations": 2 * kept + 6 * tokens * s.vocab_size}
    parts["total"] = sum(parts.values())
    return parts


def format_count(n) -> str:
    """A parameter count for people: ``4194304 → '4.19M'``, ``6738415616 → '6.74B'`` (3 significant digits)."""
    _validate.real("n", n, 0)
    return _with_unit(n, ((1e3, "k"), (1e6, "M"), (1e9, "B"), (1e12, "T")), "{:.3g}{}", "{:.3g}")


def format_bytes(n) -> str:
    """A size in decimal units with one decimal: ``8388608 → '8.4 MB'``, ``26953662464 → '27.0 GB'``."""
    _validate.real("n", n, 0, hint="(a number of bytes)")
    return _with_unit(n, ((1e3, "kB"), (1e6, "MB"), (1e9, "GB"), (1e12, "TB")), "{:.1f} {}", "{:g} B")


def _with_unit(n, units, with_unit: str, plain: str) -> str:
    """The largest unit that ``n`` reaches, moving up one when rounding reaches 1000
    (999,999 → '1M', not '1e+03k')."""
    scales = [(1, None)] + sorted(units)  # smallest first

    def show(level: int) -> tuple[str, float]:
        factor, unit = scales[level]
        value = n / factor
        if unit is None:
            text = plain.format(value)
        elif level == len(scales) - 1 and value >= 1000:  # nothing larger: keep the top unit, no exponent
            text = with_unit.replace(":.3g", ":,.0f").replace(":.1f", ":,.1f").format(value, unit)
        else:
            text = with_unit.format(value, unit)
        return text, float(text.rstrip("".join(u for _, u in units) + " B").replace(",", ""))

    level = max(i for i, (factor, _) in enumerate(scales) if n >= factor or i == 0)
    text, shown = show(level)
    if shown >= 1000 and level < len(scales) - 1:
        text, _ = show(level + 1)
    return text
