"""The backbone one frame at a time: the same hidden states as transformers' Llama, with its own cache."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from michi_lite import frame_decoder
from michi_lite.frame_decoder import FrameCache, FrameDecoder


def small_llama(kv_heads: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=kv_heads, intermediate_size=96, rope_theta=100_000.0)
    return LlamaForCausalLM(config).model.eval()


@pytest.mark.parametrize("kv_heads", [4, 2])  # plain attention, and grouped queries as SmolLM2 has them
def test_frames_fed_in_pieces_equal_one_transformers_pass_over_the_whole_sequence(kv_heads):
    llama = small_llama(kv_heads)
    inputs = torch.randn(2, 12, 64)
    with torch.no_grad():
        whole = llama(inputs_embeds=inputs).last_hidden_state
        decoder, cache = FrameDecoder(llama), FrameCache()
        pieces = [decoder(inputs[:, a:b], cache) for a, b in [(0, 3), (3, 4), (4, 8), (8, 9), (9, 10), (10, 12)]]
    assert cache.length == 12
    assert (torch.cat(pieces, dim=1) - whole).abs().max() < 1e-5


def test_the_cache_grows_past_its_first_capacity_without_losing_a_position(monkeypatch):
    monkeypatch.setattr(frame_decoder, "FIRST_CAPACITY", 4)
    llama = small_llama(2)
    inputs = torch.randn(1, 11, 64)
    with torch.no_grad():
        whole = llama(inputs_embeds=inputs).last_hidden_state
        decoder, cache = FrameDecoder(llama), FrameCache()
        steps = torch.cat([decoder(inputs[:, i:i + 1], cache) for i in range(11)], dim=1)
    assert cache.keys.shape[3] == 16  # 4, then 8, then 16
    assert (steps - whole).abs().max() < 1e-5


def test_a_cropped_cache_continues_from_the_positions_it_keeps():
    llama = small_llama(2)
    inputs, other = torch.randn(1, 8, 64), torch.randn(1, 3, 64)
    with torch.no_grad():
        decoder, cache = FrameDecoder(llama), FrameCache()
        decoder(inputs[:, :6], cache)
        decoder(other, cache)  # a detour, taken back
        cache.crop(-3)
        assert cache.length == 6
        cache.crop(5)
        rest = decoder(inputs[:, 5:], cache)
        assert (rest - llama(inputs_embeds=inputs).last_hidden_state[:, 5:]).abs().max() < 1e-5
        for bad in (9, -9):
            with pytest.raises(ValueError, match="cannot crop a cache of 8 positions"):
                cache.crop(bad)


def test_two_caches_are_two_sequences_and_a_cache_keeps_its_batch():
    llama = small_llama(2)
    decoder = FrameDecoder(llama)
    a, b = torch.randn(1, 5, 64), torch.randn(1, 5, 64)
    with torch.no_grad():
        first, second = FrameCache(), FrameCache()
        decoder(a[:, :2], first)
        decoder(b, second)
        assert (decoder(a[:, 2:], first) - llama(inputs_embeds=a).last_hidden_state[:, 2:]).abs().max() < 1e-5
        with pytest.raises(ValueError, match="batch of 1, not 2"):
            decoder(torch.randn(2, 1, 64), first)


def test_a_decoder_with_unmerged_adapters_is_refused():
    from peft import LoraConfig, get_peft_model

    llama = small_llama(2)
    adapted = get_peft_model(llama, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).base_model.model
    with pytest.raises(ValueError, match="merge the adapters first"):
        FrameDecoder(adapted)


def test_a_window_cache_attends_over_the_last_window_in_constant_memory_however_long_it_runs():
    """Against transformers' Mistral (Llama with sliding-window attention) over the whole sequence."""
    from transformers import MistralConfig, MistralForCausalLM

    from michi_lite.frame_decoder import WindowCache

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=96, sliding_window=5, rope_theta=100_000.0)
    mistral = MistralForCausalLM(config).model.eval()
    inputs = torch.randn(1, 23, 64)
    with torch.no_grad():
        whole = mistral(inputs_embeds=inputs).last_hidden_state
        decoder, cache = FrameDecoder(mistral), WindowCache(5)
        steps = [decoder(inputs[:, :3], cache)] + [decoder(inputs[:, i:i + 1], cache) for i in range(3, 23)]
    assert (torch.cat(steps, dim=1) - whole).abs().max() < 1e-4
    assert cache.keys.shape[3] == 5 and cache.length == 23
    assert cache.length - cache.offset <= 10  # the keys were turned back: rotary positions stay small


def test_a_window_cache_refuses_what_it_cannot_hold():
    from michi_lite.frame_decoder import WindowCache

    decoder, cache = FrameDecoder(small_llama(2)), WindowCache(4)
    with torch.no_grad():
        decoder(torch.randn(1, 3, 64), cache)
        with pytest.raises(ValueError, match="do not fit"):
            decoder(torch.randn(1, 2, 64), cache)
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(-1)
    with pytest.raises(ValueError, match="at least one"):
        WindowCache(0)
