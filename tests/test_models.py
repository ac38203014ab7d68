"""Tests of lora_edu.models and the shipped pretrained checkpoint (lora_edu.pretrain)."""
import pytest
import torch

from lora_edu import data, models, pretrain
from lora_edu.training import evaluate_loss


def test_digits_mlp_shapes_and_names():
    model = models.DigitsMLP()
    assert model(torch.zeros(5, 64)).shape == (5, 10)
    assert models.count_parameters(model) == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    names = {n for n, _ in model.named_modules()}
    assert set(model.linear_targets) | {model.head_name} <= names


def test_gpt_names_read_like_a_real_llm():
    model = models.TinyGPT()
    names = {n for n, _ in model.named_modules()}
    for expected in ("blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj",
                     "blocks.0.attn.o_proj", "blocks.2.mlp.up_proj", "blocks.2.mlp.down_proj", "lm_head"):
        assert expected in names
    assert 100_000 <= models.count_parameters(model) <= 200_000


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = models.TinyGPT().eval()
    ids = torch.randint(0, data.VOCAB_SIZE, (2, 20))
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % data.VOCAB_SIZE
    a, b = model(ids), model(changed)
    assert a.shape == (2, 20, data.VOCAB_SIZE)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)  # the future does not leak into the past
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_gpt_rejects_bad_input():
    model = models.TinyGPT()
    with pytest.raises(ValueError, match="more than the model's context"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(batch, steps\)"):
        model(torch.zeros(65, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by n_heads"):
        models.GPTConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="n_layers must be an int >= 1, got 0"):
        models.GPTConfig(n_layers=0)
    with pytest.raises(TypeError, match="context must be an int >= 1, got float 64.0"):
        models.GPTConfig(context=64.0)
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        models.TinyGPT({"d_model": 64})
    with pytest.raises(ValueError, match="hidden must be an int >= 1, got 0"):
        models.DigitsMLP(hidden=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        models.count_parameters("model")


def test_generate_is_greedy_and_deterministic():
    model = pretrain.load_pretrained_gpt()
    prompt = data.encode("The ")
    a = model.generate(prompt, 30, temperature=0)
    assert torch.equal(a, model.generate(prompt, 30, temperature=0))
    assert len(a) == 34 and torch.equal(a[:4], prompt)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got -1"):
        model.generate(prompt, 3, temperature=-1)


def test_shipped_checkpoint_is_small_and_learned_the_prose():
    assert pretrain.GPT_CHECKPOINT.is_file() and pretrain.GPT_CHECKPOINT.stat().st_size <= 5_000_000
    meta = pretrain.checkpoint_metadata()
    assert int(meta["steps"]) == pretrain.GPT_PRETRAINING["steps"] and "seconds" in meta
    model = pretrain.load_pretrained_gpt()
    prose = data.load_corpus("prose")
    x, y = data.evaluation_windows(prose.val, 64, max_windows=32)
    untrained = models.TinyGPT()
    assert evaluate_loss(model, x, y) < 1.7 < 4.0 < evaluate_loss(untrained, x, y)  # ln(97) = 4.57
    first, second = pretrain.load_pretrained_gpt(), pretrain.load_pretrained_gpt()
    assert first is not second and first.lm_head.weight.data_ptr() != second.lm_head.weight.data_ptr()


def test_loading_a_missing_checkpoint_names_the_script(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m lora_edu.pretrain"):
        pretrain.load_pretrained_gpt(path=tmp_path / "missing.safetensors")


def test_pretraining_is_deterministic_given_the_seed(tmp_path):
    a, _ = pretrain.pretrain_gpt(steps=3, seed=1, progress=False)
    b, _ = pretrain.pretrain_gpt(steps=3, seed=1, progress=False)
    c, _ = pretrain.pretrain_gpt(steps=3, seed=2, progress=False)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    size = pretrain.save_gpt_checkpoint(a, tmp_path / "a.safetensors", {"seed": 1})
    assert size == (tmp_path / "a.safetensors").stat().st_size
    loaded = pretrain.load_pretrained_gpt(path=tmp_path / "a.safetensors")
    assert torch.equal(loaded.lm_head.weight, a.lm_head.weight)


def test_pretrained_digits_mlp_is_cached_and_accurate():
    first = pretrain.pretrained_digits_mlp()
    second = pretrain.pretrained_digits_mlp()
    assert first is not second and torch.equal(first.fc1.weight, second.fc1.weight)
    first.fc1.weight.data.zero_()  # changing a copy leaves the cache alone
    assert not torch.equal(pretrain.pretrained_digits_mlp().fc1.weight, first.fc1.weight)
    assert pretrain.digits_accuracy(second, data.load_digits_task("original")) > 0.95


def test_generate_rejects_a_batch_of_prompts():
    model = models.TinyGPT(models.GPTConfig(d_model=16, n_heads=2, n_layers=1, mlp_hidden=32))
    with pytest.raises(ValueError, match=r"non-empty 1-D tensor \(one prompt\), got shape \(2, 3\)"):
        model.generate(torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        model.generate(torch.zeros(0, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="prompt_ids must be a 1-D torch.Tensor"):
        model.generate([1, 2, 3], 2)


def test_digits_accuracy_accepts_a_task_name_and_rejects_others():
    model = pretrain.pretrained_digits_mlp()
    by_name = pretrain.digits_accuracy(model, "mirrored")
    assert by_name == pretrain.digits_accuracy(model, data.load_digits_task("mirrored"))
    with pytest.raises(ValueError, match="task='flipped' is not allowed; allowed values: 'original'"):
        pretrain.digits_accuracy(model, "flipped")
    with pytest.raises(TypeError, match="task must be a DigitsTask or a task name"):
        pretrain.digits_accuracy(model, 3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        pretrain.digits_accuracy("model", "mirrored")
