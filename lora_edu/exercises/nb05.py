"""Checks for the exercises of notebook 05_finetuning_strategies_compared, with a hint for the usual mistakes
(the frozen weight counted as trainable, Adam's two states forgotten, d·k instead of r(d+k))."""
from __future__ import annotations

from ..checks import CheckResult, check_value, hint_for_mistake


def _check_shape_arguments(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_lora_layer_parameters(answer, d_out: int, d_in: int, r: int) -> CheckResult:
    """Exercise 1: trainable numbers LoRA adds to one ``d_out × d_in`` layer: ``r (d_in + d_out)``."""
    _check_shape_arguments(d_out=d_out, d_in=d_in, r=r)
    result = check_value("Exercise 1", answer, r * (d_in + d_out), what="trainable numbers")
    return hint_for_mistake(result, answer, [
        (d_out * d_in, "that is the dense ΔW (d_out·d_in): LoRA stores two thin factors instead."),
        (r * d_in, "that is A alone (r × d_in); B (d_out × r) trains too."),
        (r * d_out, "that is B alone (d_out × r); A (r × d_in) trains too."),
        (r * d_in * d_out, "the factors are added, not multiplied: r·d_in + r·d_out."),
    ], rtol=1e-9)


def check_training_bytes(answer, trainable: int, bytes_per_number: int = 4,
                         trainable_tensors: int | None = None) -> CheckResult:
    """Exercise 2: bytes AdamW training keeps per trainable number: weight + gradient + two moments.

    Expected ``4 · bytes_per_number · trainable`` (16 bytes each in float32); the 4-byte step counters
    are left out. ``trainable_tensors`` (how many trainable tensors, optional) lets the check recognise
    an answer that includes them: ``16 · trainable + 4 · trainable_tensors``.
    """
    _check_shape_arguments(trainable=trainable, bytes_per_number=bytes_per_number)
    if trainable_tensors is not None:
        _check_shape_arguments(trainable_tensors=trainable_tensors)
    expected = 4 * bytes_per_number * trainable
    result = check_value("Exercise 2", answer, expected, what="bytes")
    counters = [(expected + 4 * trainable_tensors,
                 f"that includes AdamW's 4-byte step counter for each of the {trainable_tensors} trainable tensors "
                 f"(16·n + 4·{trainable_tensors}, as in the table of section 5); the exercise leaves them out.",
                 0.005)] if trainable_tensors is not None else []
    return hint_for_mistake(result, answer, counters + [
        (expected / 1e6, "that is in megabytes (10⁶ bytes); give the answer in bytes.", 0.005),
        (expected / 2 ** 20, "that is in MiB (2²⁰ bytes); give the answer in bytes.", 0.005),
        (bytes_per_number * trainable, "that is the weights alone; training also keeps a gradient and "
                                       "AdamW's two moment estimates per number."),
        (2 * bytes_per_number * trainable, "weights and gradients: AdamW adds two more numbers per weight "
                                           "(exp_avg and exp_avg_sq)."),
        (3 * bytes_per_number * trainable, "you counted one AdamW state; it keeps two (exp_avg and exp_avg_sq)."),
        (4 * trainable, "that counts numbers, not bytes: multiply by the bytes per number."),
    ], rtol=1e-9)


def check_flop_ratio(answer, d: int, k: int, r: int) -> CheckResult:
    """Exercise 3: extra multiply-adds of an unmerged LoRA layer relative to ``W0 (d × k)``: ``r(d+k)/(dk)``."""
    _check_shape_arguments(d=d, k=k, r=r)
    expected = r * (d + k) / (d * k)
    result = check_value("Exercise 3", answer, expected, rtol=1e-6, what="extra compute ratio")
    return hint_for_mistake(result, answer, [
        (100 * expected, "that is a percentage; give the fraction (divide by 100).", 0.01),
        (expected, "close, but rounded; compute it in Python, e.g. r * (d + k) / (d * k), and do not round.", 0.02),
        (1 + expected, "that is the total (1 + the extra part); the question asks for the extra part only."),
        (r / d, "x goes through A (r × k) and then B (d × r): count both products, r·k + d·r."),
        (r / k, "x goes through A (r × k) and then B (d × r): count both products, r·k + d·r."),
    ], rtol=1e-9)


def check_adapter_parameters(answer, width: int, bottleneck: int, sublayers: int) -> CheckResult:
    """Exercise 4: trainable numbers of serial adapters: per sub-layer ``2·d·m + m + d`` (two weights, two biases)."""
    _check_shape_arguments(width=width, bottleneck=bottleneck, sublayers=sublayers)
    d, m = width, bottleneck
    per_adapter = 2 * d * m + m + d
    result = check_value("Exercise 4", answer, sublayers * per_adapter, what="trainable numbers")
    too_few_adapters = [(count * per_adapter, f"one adapter has the right size, but you counted {count} adapters; "
                                              f"there is one after every target sub-layer: {sublayers} in all "
                                              f"(attention and MLP in each block).")
                        for count in range(2, sublayers) if sublayers % count == 0]
    return hint_for_mistake(result, answer, too_few_adapters + [
        (sublayers * 2 * d * m, "you left out the biases: down has m, up has d."),
        (2 * d * m + m + d, "that is one adapter; there is one after every target sub-layer."),
        (sublayers * d * m, "each adapter has two matrices: down (m × d) and up (d × m)."),
    ], rtol=1e-9)
