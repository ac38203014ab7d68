"""A side-by-side benchmark of LoRA's costs: ``python -m lora_edu.bench``.

Explained in notebook 05_finetuning_strategies_compared. Everything is measured in one run, in turns
(round robin), so each printed number is a ratio of two things timed under the same conditions:

1. a training step (forward, backward, AdamW) of lora_edu's LoRA vs Hugging Face PEFT's LoRA on the same
   model, for the tiny GPT and the digits MLP (target: ≤ 0.9, lora_edu's layer is simpler);
2. inference of merged LoRA (``merge_and_unload``) vs the base model (target: ≤ 1.02: the same layers);
3. inference of unmerged LoRA vs the base model, printed next to the FLOP ratio ``r(d+k)/(dk)``;
4. inference of serial adapters vs the base model at batch 1 and batch 32;
5. a mixed batch on the tiny GPT (64 sequences of 16 tokens, each with its own task adapter; 1, 8 or 32
   distinct adapters):
   lora_edu's gathered path (`lora_edu.per_example_adapters`) vs PEFT's ``adapter_names=`` loop (target at 32
   adapters: ≤ 0.4) and vs one adapter for the whole batch, unmerged (target: ≤ 1.2).

Sizes: ``--size default`` (the notebook's models; under 2 minutes on 2 CPU cores), ``--size large``
or ``--large`` (wider and deeper models, for a GPU), ``--size tiny`` (seconds; the test suite's smoke
test). On the CPU it uses one thread unless ``--threads`` says otherwise: on a shared machine, busy
cores make multi-threaded timings erratic.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from . import _validate
from .data import VOCAB_SIZE
from .environment import get_device, seed_everything
from .adapters import per_example_adapters
from .lora import LoraConfig, add_lora, merge_lora
from .measure import _synchronize, in_turns, lora_flop_ratio, measure_latencies
from .models import DigitsMLP, GPTConfig, TinyGPT
from .strategies import apply_strategy, merge_and_unload
from .training import cross_entropy_loss


@dataclass(frozen=True)
class BenchSize:
    """Model sizes and repetitions for one benchmark size."""

    gpt: GPTConfig
    mlp_hidden: int
    lora_r: int
    adapter_bottleneck: int
    train_batch: int
    train_steps: int
    inference_repeats: int


SIZES = {
    "tiny": BenchSize(GPTConfig(d_model=16, n_heads=2, n_layers=1, mlp_hidden=32, context=16), 16, 2, 4, 4, 6, 6),
    "default": BenchSize(GPTConfig(), 256, 4, 8, 16, 40, 300),
    "large": BenchSize(GPTConfig(d_model=512, n_heads=8, n_layers=8, mlp_hidden=2048, context=256), 4096, 8, 64,
                       32, 40, 100),
}
TARGETS = {"train step, lora_edu / PEFT": 0.9, "merged LoRA / base": 1.02,
           "mixed batch, 32 adapters, lora_edu / PEFT": 0.4, "mixed batch, 32 adapters, lora_edu / one": 1.2}
MIXED_ADAPTERS = (1, 8, 32)
MIXED_BATCH, MIXED_TOKENS = 64, 16


def _models(size: BenchSize, device: torch.device) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """name -> (base model, batch of inputs, targets) for the tiny GPT and the digits MLP."""
    seed_everything(0)
    gpt = TinyGPT(size.gpt).to(device)
    ids = torch.randint(0, VOCAB_SIZE, (size.train_batch, size.gpt.context + 1), device=device)
    mlp = DigitsMLP(size.mlp_hidden).to(device)
    x = torch.rand(size.train_batch * 8, 64, device=device)
    y = torch.randint(0, 10, (size.train_batch * 8,), device=device)
    return {"tiny GPT": (gpt.eval(), ids[:, :-1], ids[:, 1:]), "digits MLP": (mlp.eval(), x, y)}


def _peft_lora(model: nn.Module, r: int, alpha: float, targets, names=("default",)) -> nn.Module:
    """PEFT's LoRA with one adapter per name (names after the first: random B, as if trained)."""
    import peft  # imported only here: it takes seconds

    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                             init_lora_weights=len(names) == 1)
    model = peft.get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    return model


def time_train_steps(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int,
                     warmup: int = 3) -> dict[str, float]:
    """Median seconds of one AdamW training step (forward, loss, backward, step) per model, timed in turns."""
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
                  for name, m in models.items()}
    times = {name: [] for name in models}
    for step, name, model in in_turns(models, warmup + steps):
        model.train()
        _synchronize(x.device)
        start = time.perf_counter()
        loss = cross_entropy_loss(model(x), y)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        _synchronize(x.device)
        if step >= warmup:
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _model_flop_ratio(model: nn.Module, targets, r: int) -> float:
    """Extra multiply-adds of unmerged LoRA over all linear layers' ``d·k``: ``Σ r(d+k) / Σ d·k``."""
    extra = total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            d, k = module.out_features, module.in_features
            total += d * k
            if any(name == t or name.endswith("." + t) for t in targets):
                extra += r * (d + k)
    return extra / total


def run(size_name: str = "default", device=None, show=print) -> dict:
    """Run every comparison at one size; print a table with ``show``; return ``{(model, measurement): value}``."""
    size = SIZES[_validate.choice("size_name", size_name, SIZES)]
    device = torch.device(device) if device is not None else get_device()
    results = {}
    started = time.perf_counter()
    show(f"lora_edu benchmark, size {size_name!r}, device {device.type}, torch threads {torch.get_num_threads()}")
    for name, (base, x, y) in _models(size, device).items():
        targets = list(base.linear_targets)
        r, alpha = size.lora_r, 2.0 * size.lora_r
        seed_everything(1)
        ours = apply_strategy(copy.deepcopy(base), "lora", r=r, lora_alpha=alpha)
        seed_everything(1)
        theirs = _peft_lora(copy.deepcopy(base), r, alpha, targets)
        for batch in (len(x), 1):
            train = time_train_steps({"lora_edu": ours, "peft": theirs}, _example(x, batch), _example(y, batch),
                                     size.train_steps)
            results[name, f"train step, lora_edu / PEFT, batch {batch}"] = train["lora_edu"] / train["peft"]
            results[name, f"train step ms, lora_edu, batch {batch}"] = 1e3 * train["lora_edu"]
            results[name, f"train step ms, PEFT, batch {batch}"] = 1e3 * train["peft"]

        merged = merge_and_unload(copy.deepcopy(ours))
        merged_kept = merge_lora(copy.deepcopy(ours))  # merged, but the LoRALinear wrappers stay
        adapters = apply_strategy(copy.deepcopy(base), "adapters", bottleneck=size.adapter_bottleneck)
        variants = {"base": base, "merged LoRA": merged, "merged, wrappers kept": merged_kept,
                    "unmerged LoRA": ours.eval(), "adapters": adapters}  # named as in the printed labels
        for batch in (1, 32):
            times = measure_latencies(variants, _example(x, batch), repeats=size.inference_repeats, warmup=5)
            for variant in list(variants)[1:]:
                results[name, f"{variant} / base, batch {batch}"] = times[variant] / times["base"]
            results[name, f"base ms, batch {batch}"] = 1e3 * times["base"]
        results[name, "FLOP ratio r(d+k)/(dk) of the LoRA layers"] = _model_flop_ratio(base, targets, r)
        first = next(m for n, m in base.named_modules() if isinstance(m, nn.Linear))
        results[name, "FLOP ratio of one layer"] = lora_flop_ratio(r, first.out_features, first.in_features)
    results.update(time_mixed_batches(size, device))
    results["seconds"] = time.perf_counter() - started
    show(format_results(results))
    return results


class _PeftMixedBatch(nn.Module):
    """``peft_model(x, adapter_names=names)``: example i through adapter ``names[i]``."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x):
        return self.model(x, adapter_names=self.names)


def time_mixed_batches(size: BenchSize, device: torch.device) -> dict:
    """A mixed batch of ``MIXED_BATCH`` sequences of ``MIXED_TOKENS`` tokens (adapters assigned round robin):
    median forward time of lora_edu's gathered path (inside `per_example_adapters`), of PEFT's per-adapter
    loop, and of one unmerged adapter for the whole batch, as ratios; and the set-up of
    `per_example_adapters` (gathering the factors, once per batch composition) over one forward."""
    seed_everything(2)
    base = TinyGPT(size.gpt).to(device).eval()
    x = torch.randint(0, VOCAB_SIZE, (MIXED_BATCH, min(MIXED_TOKENS, size.gpt.context)), device=device)
    config = LoraConfig(target_modules=list(base.linear_targets), r=size.lora_r, lora_alpha=2 * size.lora_r,
                        init_lora_weights=False)
    names = [f"task{i}" for i in range(max(MIXED_ADAPTERS))]
    ours, single = copy.deepcopy(base), add_lora(copy.deepcopy(base), config).eval()
    for name in names:
        add_lora(ours, config, name)
    theirs = _peft_lora(copy.deepcopy(base), size.lora_r, 2 * size.lora_r, base.linear_targets, names)
    repeats = max(5, size.inference_repeats // 10)
    results = {}
    for n in MIXED_ADAPTERS:
        per_example = [names[i % n] for i in range(MIXED_BATCH)]
        with per_example_adapters(ours.eval(), per_example):
            times = measure_latencies({"lora_edu": ours, "PEFT": _PeftMixedBatch(theirs, per_example),
                                       "one": single}, x, repeats=repeats, warmup=2)
        set_up = []
        for _ in range(repeats):
            start = time.perf_counter()
            with per_example_adapters(ours, per_example):
                _synchronize(device)
            set_up.append(time.perf_counter() - start)
        label = f"mixed batch, {n} adapter{'s' if n > 1 else ''}"
        for numerator, denominator in (("lora_edu", "PEFT"), ("lora_edu", "one"), ("PEFT", "one")):
            results["tiny GPT", f"{label}, {numerator} / {denominator}"] = times[numerator] / times[denominator]
        results["tiny GPT", f"{label}, set-up / one forward"] = statistics.median(set_up) / times["one"]
    return results


def _example(x: torch.Tensor, batch: int) -> torch.Tensor:
    repeats = -(-batch // len(x))
    return x.repeat((repeats,) + (1,) * (x.dim() - 1))[:batch].contiguous()


def format_results(results: dict) -> str:
    """The benchmark's table: one line per measurement, ratios with their targets where the issue set one."""
    lines = [f"{'model':<11} {'measurement':<48} {'value':>9}  target"]
    for key, value in results.items():
        if key == "seconds":
            continue
        model, measurement = key
        target = next((t for prefix, t in TARGETS.items() if measurement.startswith(prefix)), None)
        verdict = "" if target is None else f"<= {target}  ({'met' if value <= target else 'NOT met'})"
        lines.append(f"{model:<11} {measurement:<48} {value:>9.4f}  {verdict}")
    lines.append(f"finished in {results['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_edu.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="default",
                        help="model sizes: tiny (smoke test), default (2 CPU cores, < 2 min), large (GPU)")
    parser.add_argument("--large", action="store_const", const="large", dest="size", help="same as --size large")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: lora_edu's choice)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier timings on a shared machine)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be positive")
    torch.set_num_threads(args.threads)
    run(args.size, get_device(args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
