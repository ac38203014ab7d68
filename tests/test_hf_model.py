"""The tiny Llama in Hugging Face's format (notebook 08): the shipped folder loads with transformers' Auto classes,
its tokenizer is lora_edu.data's character vocabulary, pretraining is deterministic, and the loader refuses bad
folders with a clear error (missing folder, a config of another model type, a missing tokenizer)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lora_edu import data, hf_model

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


def test_shipped_folder_is_small_complete_and_tracked_by_git():
    files = hf_model.folder_files(hf_model.TINY_LLAMA_DIR)
    for name in hf_model.MODEL_FILES + hf_model.TOKENIZER_FILES + ("pretraining.json",):
        assert name in files, f"{name} missing from the shipped folder"
    assert sum(files.values()) <= 5_000_000
    if (ROOT / ".git").exists() and shutil.which("git"):
        tracked = subprocess.run(["git", "ls-files", "lora_edu/checkpoints/tiny-llama"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.split()
        assert {Path(t).name for t in tracked} >= set(hf_model.MODEL_FILES + hf_model.TOKENIZER_FILES), tracked


def test_auto_classes_load_the_shipped_model_and_tokenizer():
    hf_model.quiet_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_model.TINY_LLAMA_DIR)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_model.TINY_LLAMA_DIR)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 341_760
    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linear == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    text = "def f(x):\n    return x ** 2  # über"
    ids = tokenizer(text)["input_ids"]
    assert ids == data.encode(text).tolist()
    assert tokenizer.decode(ids) == text.replace("ü", data.UNKNOWN_CHAR)


def test_the_shipped_model_learned_the_prose():
    model, _ = hf_model.load_tiny_llama()
    prose = data.load_corpus("prose")
    x, y = data.evaluation_windows(prose.val, 128, max_windows=32)
    loss = hf_model.evaluate_lm_loss(model, x, y)
    assert loss < 0.6 * torch.log(torch.tensor(float(data.VOCAB_SIZE))).item(), loss  # far below uniform guessing
    recorded = json.loads((hf_model.TINY_LLAMA_DIR / "pretraining.json").read_text())
    assert recorded["steps"] == hf_model.TINY_LLAMA_PRETRAINING["steps"]


def test_pretraining_is_deterministic():
    first, losses = hf_model.pretrain_tiny_llama(steps=2, seed=3)
    second, _ = hf_model.pretrain_tiny_llama(steps=2, seed=3)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert set(losses) == {"train_loss", "val_loss"}


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path=.*nowhere.*is not a folder.*config.json"):
        hf_model.load_tiny_llama(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="path must be a folder path"):
        hf_model.load_tiny_llama(42)


def test_a_config_of_another_model_type_is_refused(tmp_path):
    folder = tmp_path / "gpt2"
    shutil.copytree(hf_model.TINY_LLAMA_DIR, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*loads model_type 'llama'"):
        hf_model.load_tiny_llama(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json .* is not valid JSON"):
        hf_model.load_tiny_llama(folder)


def test_a_missing_tokenizer_or_model_file_is_refused(tmp_path):
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(hf_model.TINY_LLAMA_DIR, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks the tokenizer file\(s\) \['tokenizer.json'\].*"
                                                r"tokenizer.save_pretrained"):
        hf_model.load_tiny_llama(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks the model file\(s\) \['model.safetensors'\]"):
        hf_model.load_tiny_llama(folder)


def test_quiet_transformers_silences_saving_and_loading(tmp_path, capfd):
    model, tokenizer = hf_model.load_tiny_llama()
    model.save_pretrained(tmp_path / "copy")
    tokenizer.save_pretrained(tmp_path / "copy")
    hf_model.load_tiny_llama(tmp_path / "copy")
    assert capfd.readouterr().err == ""


def test_error_text_sorts_the_sets_peft_prints():
    error = ValueError("Target modules {'v_proj', 'q_proj'} not found; also {'b', 'a'}")
    assert hf_model.error_text(error) == "Target modules {'q_proj', 'v_proj'} not found; also {'a', 'b'}"
    assert hf_model.error_text(ValueError("no set here")) == "no set here"
