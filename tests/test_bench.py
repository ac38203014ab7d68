"""Smoke test of the benchmark (python -m lora_edu.bench) at its tiny size. Wall times are never asserted."""
import math

import pytest
import torch

from lora_edu import bench
from lora_edu.models import DigitsMLP


def test_tiny_benchmark_runs_and_reports_every_ratio():
    lines = []
    results = bench.run("tiny", "cpu", show=lines.append)
    for model in ("tiny GPT", "digits MLP"):
        for measurement in ("train step, lora_edu / PEFT, batch 1", "merged LoRA / base, batch 1",
                            "merged LoRA / base, batch 32", "unmerged LoRA / base, batch 32",
                            "adapters / base, batch 1", "adapters / base, batch 32",
                            "FLOP ratio r(d+k)/(dk) of the LoRA layers"):
            value = results[model, measurement]
            assert math.isfinite(value) and value > 0, (model, measurement, value)
    # The FLOP ratio is exact: the tiny GPT's LoRA layers are 4 projections 16x16 and 16<->32, r = 2.
    d, h, r = 16, 32, 2
    extra = 4 * r * (d + d) + 2 * r * (d + h)
    total = 4 * d * d + 2 * d * h + d * 97  # lm_head is linear too, but not a LoRA target
    assert results["tiny GPT", "FLOP ratio r(d+k)/(dk) of the LoRA layers"] == pytest.approx(extra / total)
    text = "\n".join(lines)
    assert "train step, lora_edu / PEFT" in text and "<= 0.9" in text and "<= 1.02" in text


def test_main_parses_arguments(capsys):
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--size", "tiny", "--device", "cpu", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # main sets the thread count for the whole process
    assert "merged LoRA / base" in capsys.readouterr().out
    for wrong in (["--size", "huge"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            bench.main(wrong)


def test_bad_size_is_rejected():
    with pytest.raises(ValueError, match="size_name='huge' is not allowed; allowed values: 'tiny', 'default', 'large'"):
        bench.run("huge")


def test_train_step_timing_trains_both_models():
    a, b = DigitsMLP(hidden=8), DigitsMLP(hidden=8)
    before = a.fc1.weight.clone()
    x, y = torch.rand(4, 64), torch.randint(0, 10, (4,))
    times = bench.time_train_steps({"a": a, "b": b}, x, y, steps=2, warmup=1)
    assert set(times) == {"a", "b"} and not torch.equal(a.fc1.weight, before)
