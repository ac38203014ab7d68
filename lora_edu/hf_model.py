"""A tiny causal language model in Hugging Face's own format: a `transformers` Llama and a character tokenizer.

Explained in notebook 08_lora_with_peft. The model is a ``LlamaForCausalLM`` with the layer names real LLMs use
(``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``), pretrained on the
course's English prose (Python's documentation topics, `lora_edu.data`) and shipped as a ``save_pretrained``
folder, ``lora_edu/checkpoints/tiny-llama/``, that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load. Its tokenizer gives every character of `lora_edu.data.VOCABULARY` its own
id (the same ids as `lora_edu.data.encode`). Reproduce the folder with::

    python -m lora_edu.hf_model            # writes the folder, prints how long it took
    python -m lora_edu.hf_model --check    # retrains into a temporary folder and compares with the shipped one

Training is deterministic given ``--seed`` and ``--threads`` (1 thread by default); ``--check`` allows a small
difference (``CHECK_TOLERANCE``), since CPUs with other vector units round some sums differently.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import UNKNOWN_CHAR, VOCABULARY, evaluation_windows, load_corpus, random_windows

__all__ = ["TINY_LLAMA_DIR", "TINY_LLAMA_CONFIG", "TINY_LLAMA_PRETRAINING", "quiet_transformers",
           "make_tokenizer", "make_tiny_llama", "pretrain_tiny_llama", "load_tiny_llama", "check_model_folder",
           "lm_loss", "evaluate_lm_loss", "folder_files", "error_text"]

TINY_LLAMA_DIR = Path(__file__).resolve().parent / "checkpoints" / "tiny-llama"
TINY_LLAMA_CONFIG = {"vocab_size": len(VOCABULARY), "hidden_size": 96, "intermediate_size": 256,
                     "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
                     "max_position_embeddings": 256, "tie_word_embeddings": True}
TINY_LLAMA_PRETRAINING = {"seed": 0, "steps": 600, "batch_size": 32, "context": 128, "lr": 3e-3,
                          "warmup_steps": 50, "final_lr_fraction": 0.1, "weight_decay": 0.01}
CHECK_TOLERANCE = 1e-4  # largest weight difference --check accepts
MODEL_FILES = ("config.json", "model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
ALLOWED_MODEL_TYPES = ("llama",)


def quiet_transformers() -> None:
    """Turn off what `transformers` writes to stderr (progress bars on save and load, info and warnings), so no
    notebook cell shows stderr. Notebook 08 calls it once at the top."""
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    # peft 0.21 asks transformers 5 for a renamed property each time it wraps a model; nothing for a learner to fix
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)


def error_text(error) -> str:
    """``str(error)`` with every ``{...}`` set in it listed in sorted order. PEFT names target modules as a Python
    set, whose order changes from run to run; sorted, a notebook's stored output stays the same. Notebook 08."""
    import re

    def sort_set(match):
        return "{" + ", ".join(sorted(match.group(1).split(", "))) + "}"

    return re.sub(r"\{([^{}]*)\}", sort_set, str(error))


def make_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: each character of `lora_edu.data.VOCABULARY` is one token
    with the same id as `lora_edu.data.encode`; any other character becomes ``UNKNOWN_CHAR``. ``decode`` joins
    the characters back (no spaces added). See notebook 08_lora_with_peft."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({c: i for i, c in enumerate(VOCABULARY)}, unk_token=UNKNOWN_CHAR))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # every character on its own
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=UNKNOWN_CHAR, pad_token=UNKNOWN_CHAR,
                                   model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"])


def make_tiny_llama(seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` with `TINY_LLAMA_CONFIG` (341,760 parameters; the output
    layer shares the embedding's weight). See notebook 08_lora_with_peft."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**TINY_LLAMA_CONFIG, pad_token_id=VOCABULARY.index(UNKNOWN_CHAR),
                         bos_token_id=None, eos_token_id=None)
    return LlamaForCausalLM(config)


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy (nats) of a causal LM: ``x``, ``y`` (batch, tokens), ``y`` the
    characters that follow ``x``'s."""
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


@torch.no_grad()
def evaluate_lm_loss(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64) -> float:
    """`lm_loss` over fixed windows ``x``, ``y`` (n, tokens), in batches, in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        total += float(lm_loss(model, xb, yb)) * len(xb)
    model.train(was_training)
    return total / len(x)


def pretrain_tiny_llama(steps: int = TINY_LLAMA_PRETRAINING["steps"], seed: int = TINY_LLAMA_PRETRAINING["seed"]):
    """Pretrain the tiny Llama on the prose corpus (next-character prediction) on the CPU: AdamW with linear
    warm-up and cosine decay to ``final_lr_fraction`` of the rate, on random windows of
    ``TINY_LLAMA_PRETRAINING['context']`` characters. Returns ``(model, {"train_loss": ..., "val_loss": ...})``."""
    settings = TINY_LLAMA_PRETRAINING
    prose = load_corpus("prose")
    model = make_tiny_llama(seed)
    model.train()
    batches = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings["lr"])
    warmup, floor = min(settings["warmup_steps"], steps // 2), settings["final_lr_fraction"]

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(steps - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    losses = []
    for _ in range(steps):
        x, y = random_windows(prose.train, settings["batch_size"], settings["context"], batches)
        loss = lm_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    val_x, val_y = evaluation_windows(prose.val, settings["context"], max_windows=256)
    model.eval()
    return model, {"train_loss": sum(losses[-20:]) / 20, "val_loss": evaluate_lm_loss(model, val_x, val_y)}


def folder_files(folder) -> dict[str, int]:
    """``{file name: bytes}`` of every file in ``folder`` (recursively, names relative to it), sorted."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def check_model_folder(path) -> Path:
    """Check that ``path`` is a model folder `load_tiny_llama` can load, before `transformers` reads it:
    FileNotFoundError when the folder, its model files (``config.json``, ``model.safetensors``) or its tokenizer
    files (``tokenizer.json``, ``tokenizer_config.json``) are missing; ValueError when ``config.json`` is not
    JSON or its ``model_type`` is not one of `ALLOWED_MODEL_TYPES`. Returns the folder as a Path."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a folder path (str or pathlib.Path), got {type(path).__name__}")
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"path={str(path)!r} is not a folder; give a save_pretrained folder holding "
                                f"{', '.join(MODEL_FILES + TOKENIZER_FILES)} (the shipped one: "
                                "lora_edu.hf_model.TINY_LLAMA_DIR)")
    for kind, names in (("model", MODEL_FILES), ("tokenizer", TOKENIZER_FILES)):
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"path={str(path)!r} lacks the {kind} file(s) {missing}; a folder for "
                                    f"load_tiny_llama holds {', '.join(MODEL_FILES + TOKENIZER_FILES)} "
                                    "(model.save_pretrained(path) and tokenizer.save_pretrained(path))")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"config.json in path={str(path)!r} is not valid JSON: {exc}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in ALLOWED_MODEL_TYPES:
        raise ValueError(f"config.json in path={str(path)!r} has model_type={model_type!r}; load_tiny_llama "
                         f"loads model_type {' or '.join(map(repr, ALLOWED_MODEL_TYPES))} (for any other model "
                         "use transformers.AutoModelForCausalLM.from_pretrained directly)")
    return folder


def load_tiny_llama(path=TINY_LLAMA_DIR, device=None):
    """``(model, tokenizer)`` from a ``save_pretrained`` folder (default: the shipped tiny Llama), the model in
    eval mode on ``device`` (default CPU), in float32. The folder is checked first (`check_model_folder`).
    Each call returns a new model. See notebook 08_lora_with_peft."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = check_model_folder(path)
    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.eval()
    return (model.to(device) if device is not None else model), tokenizer


def save_tiny_llama(model, tokenizer, folder: Path, metadata: dict) -> int:
    """``save_pretrained`` the model and tokenizer into ``folder`` plus ``pretraining.json`` (how it was made);
    returns the folder's size in bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "pretraining.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sum(folder_files(folder).values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_edu.hf_model",
                                     description="Pretrain the tiny Llama on Python's documentation topics and "
                                                 "save it in Hugging Face's format.")
    parser.add_argument("--steps", type=int, default=TINY_LLAMA_PRETRAINING["steps"])
    parser.add_argument("--seed", type=int, default=TINY_LLAMA_PRETRAINING["seed"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (results are bit-identical only at the same count; default 1)")
    parser.add_argument("--out", type=Path, default=TINY_LLAMA_DIR, help="the folder to write")
    parser.add_argument("--check", action="store_true",
                        help="train into a temporary folder and compare its weights with the folder at --out")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be positive")
    torch.set_num_threads(args.threads)
    quiet_transformers()
    print(load_corpus("prose").report())
    start = time.perf_counter()
    model, losses = pretrain_tiny_llama(args.steps, args.seed)
    seconds = time.perf_counter() - start
    metadata = {"seed": args.seed, "steps": args.steps, "threads": args.threads, **TINY_LLAMA_PRETRAINING,
                "final_train_loss": round(losses["train_loss"], 4), "prose_val_loss": round(losses["val_loss"], 4),
                "seconds": round(seconds, 1), "python": sys.version.split()[0], "torch": torch.__version__}
    metadata["steps"] = args.steps
    target = Path(tempfile.mkdtemp()) / "tiny-llama" if args.check else args.out
    size = save_tiny_llama(model, make_tokenizer(), target, metadata)
    print(f"pretrained LlamaForCausalLM ({sum(p.numel() for p in model.parameters()):,} parameters) for "
          f"{args.steps} steps in {seconds:.1f} s on {args.threads} CPU thread(s)")
    print(f"prose validation loss {losses['val_loss']:.4f} nats/char; wrote {size:,} bytes to {target}")
    if args.check:
        from safetensors.torch import load_file

        retrained = load_file(str(target / "model.safetensors"))
        shipped = load_file(str(args.out / "model.safetensors"))
        difference = (max(float((retrained[k].float() - shipped[k].float()).abs().max()) for k in shipped)
                      if retrained.keys() == shipped.keys() else float("inf"))
        print(f"largest weight difference from {args.out}: {difference:.3g} (accepted up to {CHECK_TOLERANCE:g})")
        return 0 if difference <= CHECK_TOLERANCE else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
