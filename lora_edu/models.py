"""The two base models the course fine-tunes: a digits MLP and a tiny character-level GPT.

Explained in notebook 05_finetuning_strategies_compared. Module names follow real LLMs (Llama, Mistral,
GPT-NeoX in Hugging Face transformers): ``blocks.0.attn.q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
``blocks.0.mlp.up_proj``, ``down_proj``, ``lm_head``, so LoRA ``target_modules`` read the same as they
would for a real model.

Each model names its own fine-tuning targets (class attributes used by `lora_edu.strategies`):
``linear_targets`` (the layers LoRA and dense ΔW adapt), ``adapter_targets`` (the sub-layers a serial
adapter follows) and ``head_name`` (the output layer).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate
from .data import VOCAB_SIZE


# Digits MLP -----------------------------------------------------------------------------------

class DigitsMLP(nn.Module):
    """``x (batch, 64) -> relu(fc1) -> relu(fc2) -> head -> logits (batch, 10)``.

    ``fc1``: 64 → hidden, ``fc2``: hidden → hidden, ``head``: hidden → 10. With ``hidden=256``:
    16,640 + 65,792 + 2,570 = 85,002 parameters. See notebook 05_finetuning_strategies_compared.
    """

    linear_stack = ("fc1", "fc2", "head")  # every Linear in forward order, ReLU between (for lora_edu.batched)
    linear_targets = ("fc1", "fc2")
    adapter_targets = ("fc1", "fc2")
    head_name = "head"

    def __init__(self, hidden: int = 256, in_features: int = 64, classes: int = 10):
        for name, value in (("hidden", hidden), ("in_features", in_features), ("classes", classes)):
            _validate.integer(name, value, 1)
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h))
        return self.head(h)


# Tiny GPT -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GPTConfig:
    """The tiny GPT's size. ``d_model`` must be divisible by ``n_heads``.

    ``mlp_hidden`` is the MLP's inner width; its default, 256, is 4 × the default ``d_model`` (64), the
    usual transformer ratio, but it does not follow ``d_model``: set it when you change the width.
    """

    vocab_size: int = VOCAB_SIZE
    context: int = 64
    d_model: int = 64
    n_layers: int = 3
    n_heads: int = 4
    mlp_hidden: int = 256

    def __post_init__(self):
        for name in ("vocab_size", "context", "d_model", "n_layers", "n_heads", "mlp_hidden"):
            _validate.integer(name, getattr(self, name), 1)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``.

    ``x (B, T, d) -> q, k, v (B, heads, T, d/heads) -> softmax(q kᵀ / sqrt(d/heads) + causal mask) v
    -> o_proj -> (B, T, d)``.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, d = x.shape

        def split(t):  # (B, T, d) -> (B, heads, T, d/heads)
            return t.view(batch, steps, self.n_heads, d // self.n_heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(batch, steps, d))


class MLP(nn.Module):
    """``up_proj (d -> hidden) -> GELU -> down_proj (hidden -> d)``, as in GPT-2.

    Llama's MLP adds ``gate_proj`` (SwiGLU: ``down(silu(gate(x)) * up(x))``); only the names are shared.
    """

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.up_proj = nn.Linear(d_model, hidden)
        self.down_proj = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config.d_model, config.n_heads)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config.d_model, config.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A character-level GPT: ids ``(B, T)`` with ``T <= context`` -> logits ``(B, T, vocab_size)``.

    ``tok_emb`` and ``pos_emb`` (learned), ``blocks.{i}`` (pre-norm attention + MLP), ``ln_f`` and an
    untied ``lm_head``. See notebook 05_finetuning_strategies_compared.
    """

    linear_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
    adapter_targets = ("attn", "mlp")
    head_name = "lm_head"

    def __init__(self, config: GPTConfig | None = None):
        config = _validate.instance("config", GPTConfig() if config is None else config, GPTConfig, "a GPTConfig")
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(param, 0.0, 0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"ids must have shape (batch, steps), got {tuple(ids.shape)}")
        steps = ids.shape[1]
        if steps > self.config.context:
            raise ValueError(f"ids has {steps} steps, more than the model's context ({self.config.context})")
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(steps, device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``new_tokens`` characters after ``prompt_ids``; returns the 1-D ids, prompt included.

        ``prompt_ids``: a 1-D int64 tensor of at least one id (one prompt; a batch ``(B, T)`` is
        rejected). ``temperature=0`` picks the most likely character each step (greedy); otherwise each
        character is drawn from ``softmax(logits / temperature)`` with ``generator``."""
        _validate.instance("prompt_ids", prompt_ids, torch.Tensor, "a 1-D torch.Tensor of ids")
        if prompt_ids.dim() != 1 or len(prompt_ids) == 0:
            raise ValueError(f"prompt_ids must be a non-empty 1-D tensor (one prompt), got shape "
                             f"{tuple(prompt_ids.shape)}; for one row of a batch pass prompt_ids[i]")
        _validate.integer("new_tokens", new_tokens, 1)
        _validate.real("temperature", temperature, 0)
        ids = prompt_ids.reshape(1, -1)
        for _ in range(new_tokens):
            logits = self(ids[:, -self.config.context:])[0, -1]
            if temperature == 0:
                nxt = logits.argmax().reshape(1)
            else:
                probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
                nxt = torch.multinomial(probs, 1, generator=generator).to(ids.device)
            ids = torch.cat([ids, nxt.reshape(1, 1)], dim=1)
        return ids[0]


def count_parameters(model: nn.Module) -> int:
    """The number of numbers in ``model``'s parameters (trainable or not)."""
    return sum(p.numel() for p in _validate.module("model", model).parameters())
