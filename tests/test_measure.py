"""Tests of lora_edu.measure: exact counts and bytes, timings that run (never asserted as times)."""
import pytest
import torch

from lora_edu import measure, models, strategies


def test_counts_and_percent():
    model = strategies.apply_strategy(models.DigitsMLP(hidden=16), "head_only")
    count = measure.count_trainable(model)
    assert count.trainable == 16 * 10 + 10
    assert count.total == models.count_parameters(models.DigitsMLP(hidden=16))
    assert count.percent_of(count.total) == pytest.approx(100 * 170 / count.total)
    with pytest.raises(ValueError, match="base_total must be a finite number > 0"):
        count.percent_of(0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        measure.count_trainable([1, 2])


def test_training_memory_is_16_bytes_per_trainable_number_in_float32():
    model = strategies.apply_strategy(models.DigitsMLP(hidden=16), "lora", r=2)
    memory = measure.measured_training_memory_bytes(model)
    trainable = measure.count_trainable(model).trainable
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    assert memory["trainable_weights"] == 4 * trainable
    assert memory["trainable_total"] == 16 * trainable + 4 * tensors
    assert memory["weights"] == 4 * measure.count_trainable(model).total
    assert memory["total"] == memory["weights"] + memory["gradients"] + memory["optimizer"]
    assert memory["total"] > memory["trainable_total"]  # the frozen base weights are still in memory
    half = models.DigitsMLP(hidden=16).half()
    assert measure.measured_training_memory_bytes(half)["trainable_weights"] == 2 * models.count_parameters(half)


def test_measured_checkpoint_bytes_grow_with_the_data():
    small = measure.measured_checkpoint_bytes({"a": torch.zeros(10)})
    large = measure.measured_checkpoint_bytes({"a": torch.zeros(1000)})
    assert 990 * 4 <= large - small <= 990 * 4 + 16  # the data, plus a few header digits
    assert small < 200  # a small JSON header
    with pytest.raises(ValueError, match="non-empty mapping"):
        measure.measured_checkpoint_bytes({})


def test_lora_flop_ratio():
    assert measure.lora_flop_ratio(8, 2500, 2500) == pytest.approx(8 * 5000 / 2500 ** 2)
    with pytest.raises(ValueError, match="r must be an int >= 1"):
        measure.lora_flop_ratio(0, 4, 4)


def test_latency_measurements_run_and_return_every_model():
    a, b = models.DigitsMLP(hidden=8), models.DigitsMLP(hidden=16)
    times = measure.measure_latencies({"a": a, "b": b}, torch.zeros(1, 64), repeats=3, warmup=1)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    assert measure.time_inference(a, torch.zeros(2, 64), repeats=2, warmup=0) > 0
    with pytest.raises(ValueError, match="models must be a non-empty mapping"):
        measure.measure_latencies({}, torch.zeros(1, 64))
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        measure.measure_latencies({"a": a}, torch.zeros(1, 64), repeats=0)
    with pytest.raises(TypeError, match="example must be a torch.Tensor"):
        measure.measure_latencies({"a": a}, [0.0] * 64)
    with pytest.raises(ValueError, match="min_sample_seconds must be a finite number >= 0 and <= 1, got -1"):
        measure.measure_latencies({"a": a}, torch.zeros(1, 64), min_sample_seconds=-1)


def test_latency_samples_return_every_round_and_agree_with_the_median():
    a, b = models.DigitsMLP(hidden=8), models.DigitsMLP(hidden=16)
    samples = measure.latency_samples({"a": a, "b": b}, torch.zeros(1, 64), repeats=5, warmup=1)
    assert set(samples) == {"a", "b"} and all(len(v) == 5 and min(v) > 0 for v in samples.values())
    assert min(samples["a"]) <= sorted(samples["a"])[2] <= max(samples["a"])
    with pytest.raises(ValueError, match="repeats must be an int >= 1"):
        measure.latency_samples({"a": a}, torch.zeros(1, 64), repeats=0)


def test_latency_samples_batch_short_passes():
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            return x

    measure.measure_latencies({"id": Counting()}, torch.zeros(1), repeats=2, warmup=1, min_sample_seconds=1e-3)
    assert len(calls) > 3  # a pass this short is repeated within each sample
    calls.clear()
    measure.measure_latencies({"id": Counting()}, torch.zeros(1), repeats=2, warmup=1, min_sample_seconds=0)
    assert len(calls) == 3  # one warm-up pass, then one pass per sample


def test_time_state_load_swaps_the_weights():
    model = strategies.apply_strategy(models.DigitsMLP(hidden=8), "lora", r=2)
    state = {k: torch.ones_like(v) for k, v in strategies.trainable_state_dict(model).items()}
    assert measure.time_state_load(model, state, repeats=2) > 0
    assert torch.equal(model.fc1.lora_A["default"], torch.ones_like(model.fc1.lora_A["default"]))
    with pytest.raises(ValueError, match="keys the model lacks: nope"):
        measure.time_state_load(model, {"nope": torch.zeros(1)})


def test_peak_memory_note():
    assert measure.peak_memory_note(None) == "n/a (CPU)"
    assert measure.peak_memory_note(2_500_000) == "2.50 MB"


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="r must be an int >= 1, got float 2.0"):
        measure.lora_flop_ratio(2.0, 4, 4)
    with pytest.raises(TypeError, match="repeats must be an int >= 1"):
        measure.measure_latencies({"a": models.DigitsMLP(hidden=8)}, torch.zeros(1, 64), repeats="3")
    with pytest.raises(TypeError, match="tensors must be a mapping of names to tensors, got list"):
        measure.measured_checkpoint_bytes([torch.zeros(2)])
    with pytest.raises(TypeError, match="tensors must map str names to torch.Tensor values; wrong entries: w"):
        measure.measured_checkpoint_bytes({"w": [1.0, 2.0]})


def test_optimizer_state_bytes_are_measured_from_the_state():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters())
    assert measure.optimizer_state_bytes(optimizer) == 0                      # nothing before the first step
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    numbers = sum(p.numel() for p in model.parameters())
    assert measure.optimizer_state_bytes(optimizer) == 8 * numbers + 4 * 4     # m, v and a step per tensor
    assert measure.optimizer_state_bytes(optimizer) == measure.measured_training_memory_bytes(model)["optimizer"]
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        measure.optimizer_state_bytes(model)
