"""lora_edu.planner: what fits follows the estimators of notebooks 03 and 10; bad input is refused."""
import pytest

from lora_edu import counting, planner


def test_rows_use_the_memory_estimator_and_storage_counts():
    rows = {r.method: r for r in planner.plan("7B", n_tasks=3, gpu_gib=24)}
    shape = counting.LLAMA2_7B
    for method, row in rows.items():
        assert row.train_bytes == counting.finetuning_memory_bytes(shape, method, r=8, targets=("q", "v"),
                                                                  checkpointing=True)["total"]
    total = counting.count_model_params(shape)
    assert rows["full"].storage_bytes == 3 * 2 * total
    assert rows["lora"].storage_bytes == 2 * total + 3 * 2 * rows["lora"].trainable
    assert not rows["full"].fits and rows["lora"].fits and rows["qlora"].fits


def test_qlora_alone_fits_70b_on_48_gib_and_latency_need_rules_out_unmerged_adapters():
    assert [r.method for r in planner.plan("70B", 1, 48) if r.fits] == ["qlora"]
    rows = planner.plan("7B", n_tasks=4, gpu_gib=200, latency="no added latency")
    assert [r.method for r in rows if r.fits] == ["full"]
    assert all(r.fits for r in planner.plan("7B", n_tasks=1, gpu_gib=200, latency="no added latency"))


@pytest.mark.parametrize("kwargs, error, words", [
    ({"model": "8B"}, ValueError, "model='8B' is not allowed"),
    ({"n_tasks": 0}, ValueError, "n_tasks"),
    ({"gpu_gib": 0}, ValueError, "gpu_gib"),
    ({"latency": "fast"}, ValueError, "latency='fast' is not allowed"),
])
def test_bad_input(kwargs, error, words):
    with pytest.raises(error) as info:
        planner.plan(**kwargs)
    assert words in str(info.value)
