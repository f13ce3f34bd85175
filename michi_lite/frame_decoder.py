"""The backbone run one 80 ms frame at a time: what speaking pays on every frame.

Speaking feeds the backbone one position per frame and reads back one hidden
state. At that size a step is no longer arithmetic: on two CPU cores the
weights' matrix-vector products take about half of it, and the rest is the
cost of calling several hundred small operations, one after another
(``michi-lite bench speaker`` times both ways). ``FrameDecoder`` is the
same Llama computation as ``transformers``' with fewer operations per layer:

* the query, key and value projections are one matrix, and so are the MLP's
  gate and up projections: four matrix products a layer instead of seven;
* keys and values go into a cache allocated ahead (doubled when full)
  instead of being concatenated onto a growing one every step;
* the rotary angles are computed once a step, not once a layer, and a single
  position needs no attention mask.

It holds its own copy of the weights, laid out that way, so ``int8_linears``
can quantise it like any other module. The cache is a separate object, so
one decoder serves any number of sequences: a ``FrameCache`` keeps every
position (a sentence, a dialogue's turn), a ``WindowCache`` the last
``window`` of them in a fixed ring, for a conversation that goes on for an
hour in constant memory and time a step. A decoder with LoRA adapters must
be merged first (``SpeechModel.merge_adapters``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FIRST_CAPACITY = 256  # positions the cache holds before it first grows: 20 s of frames


def fused_linear(*linears: nn.Linear) -> nn.Linear:
    """Linear layers that read the same input -> one layer whose output is theirs, concatenated (of one: a copy)."""
    if any(type(linear) is not nn.Linear or linear.bias is not None for linear in linears):
        raise ValueError("FrameDecoder needs plain bias-free nn.Linear projections: merge the adapters first")
    weight = torch.cat([linear.weight.detach() for linear in linears])  # (sum of outputs, in)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    fused.weight.data.copy_(weight)
    return fused


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, Llama's half-split layout: x (batch, heads, n, head_dim), cos/sin (n, head_dim)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class FrameDecoderLayer(nn.Module):
    """One Llama decoder layer with fused projections."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        attention, mlp = layer.self_attn, layer.mlp
        self.qkv = fused_linear(attention.q_proj, attention.k_proj, attention.v_proj)
        self.out = fused_linear(attention.o_proj)
        self.gate_up = fused_linear(mlp.gate_proj, mlp.up_proj)
        self.down = fused_linear(mlp.down_proj)
        self.attention_norm = nn.Parameter(layer.input_layernorm.weight.detach().clone())
        self.mlp_norm = nn.Parameter(layer.post_attention_layernorm.weight.detach().clone())
        self.splits = [attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features]


class FrameCache:
    """Keys and values of the positions fed so far, in tensors allocated ahead and doubled when full."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None  # (layers, batch, kv_heads, capacity, head_dim)
        self.values: torch.Tensor | None = None
        self.length = 0  # positions held

    def place(self, layers: int, batch: int, kv_heads: int, head_dim: int, n: int,
              like: torch.Tensor) -> tuple[int, slice, slice]:
        """Where ``n`` new positions go: their first rotary position, the slots they are written to and the
        slots a query attends over (theirs included)."""
        start, end = self.length, self.length + n
        self.make_room(layers, batch, kv_heads, head_dim, end, like)
        return start, slice(start, end), slice(0, end)

    def make_room(self, layers: int, batch: int, kv_heads: int, head_dim: int, needed: int,
                  like: torch.Tensor) -> None:
        """Grow to hold ``needed`` positions (the batch is fixed by the first call)."""
        if self.keys is not None and self.keys.shape[1] != batch:
            raise ValueError(f"this cache holds a batch of {self.keys.shape[1]}, not {batch}")
        capacity = 0 if self.keys is None else self.keys.shape[3]
        if needed <= capacity:
            return
        capacity = max(FIRST_CAPACITY, capacity)
        while capacity < needed:
            capacity *= 2
        keys, values = (like.new_zeros(layers, batch, kv_heads, capacity, head_dim) for _ in range(2))
        if self.keys is not None:
            keys[:, :, :, :self.length] = self.keys[:, :, :, :self.length]
            values[:, :, :, :self.length] = self.values[:, :, :, :self.length]
        self.keys, self.values = keys, values

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` positions, or with a negative one drop that many (as ``DynamicCache.crop``).

        The next call writes over the positions dropped.
        """
        keep = self.length + max_length if max_length < 0 else max_length
        if not 0 <= keep <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} positions to {keep}")
        self.length = keep


class WindowCache(FrameCache):
    """The last ``window`` positions' keys and values in a ring allocated once: constant memory and time a step.

    Fed one position at a time once it is full, each new one overwrites the
    oldest; a single query attends over the ring in any order (attention
    sums over what it sees), so the slots need no reordering. Keys are
    stored rotated by their rotary position, which the ring keeps below
    ``2 * window``: when it gets there, ``FrameDecoder`` turns every stored
    key back by ``window`` positions (rotations compose), so the angles stay
    as precise after an hour as after a minute. The positions a query sees
    are at most ``window - 1`` back, as in training on clips of that length.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"a window holds at least one position, not {window}")
        super().__init__()
        self.window = window
        self.offset = 0  # rotary position = length - offset

    def place(self, layers: int, batch: int, kv_heads: int, head_dim: int, n: int,
              like: torch.Tensor) -> tuple[int, slice, slice]:
        slot = self.length % self.window
        if n > 1 and (self.length + n > self.window):
            raise ValueError(f"a window cache takes several positions at once only while it has room: {n} new ones "
                             f"after {self.length} do not fit in {self.window}")
        if self.keys is None:  # the ring, allocated once
            self.keys, self.values = (like.new_zeros(layers, batch, kv_heads, self.window, head_dim) for _ in range(2))
        elif self.keys.shape[1] != batch:
            raise ValueError(f"this cache holds a batch of {self.keys.shape[1]}, not {batch}")
        end = min(self.length + n, self.window)
        return self.length - self.offset, slice(slot, slot + n), slice(0, end)

    def crop(self, max_length: int) -> None:
        raise ValueError("a window cache keeps a ring of positions: it cannot be cropped")


class FrameDecoder(nn.Module):
    """A Llama decoder for a few positions per call, each call extending a ``FrameCache``.

    ``decoder`` is a ``transformers`` ``LlamaModel`` (SmolLM2, or the ``tiny``
    preset's random one) whose layers are plain linear layers. Called on
    inputs (batch, n, hidden) and a cache, it returns their final hidden
    states (batch, n, hidden): each position attends to every one the cache
    holds and to the new ones up to itself. A new ``FrameCache()`` starts a
    new sequence.
    """

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        config = decoder.config
        if config.hidden_act != "silu":
            raise ValueError(f"FrameDecoder computes Llama's SiLU MLP, not {config.hidden_act!r}")
        rope_type = getattr(decoder.rotary_emb, "rope_type", "default")
        if rope_type.startswith("dynamic"):
            raise ValueError(f"FrameDecoder needs fixed rotary frequencies, not {rope_type!r} ones")
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.layers = nn.ModuleList(FrameDecoderLayer(layer) for layer in decoder.layers)
        self.final_norm = nn.Parameter(decoder.norm.weight.detach().clone())
        self.register_buffer("inv_freq", decoder.rotary_emb.inv_freq.detach().clone(), persistent=False)
        self.rope_scale = decoder.rotary_emb.attention_scaling

    def forward(self, inputs: torch.Tensor, cache: FrameCache) -> torch.Tensor:
        batch, n, hidden = inputs.shape
        if isinstance(cache, WindowCache) and cache.length - cache.offset + n > 2 * cache.window:
            self.rebase(cache)
        first, write, visible = cache.place(len(self.layers), batch, self.kv_heads, self.head_dim, n, inputs)
        positions = torch.arange(first, first + n, device=inputs.device, dtype=self.inv_freq.dtype)
        angles = torch.outer(positions, self.inv_freq).repeat(1, 2)  # (n, head_dim)
        cos, sin = ((f(angles) * self.rope_scale).to(inputs.dtype) for f in (torch.cos, torch.sin))
        start = visible.stop - n  # positions the new ones see before themselves
        if n == 1 or start == 0:
            mask = None  # one position sees the whole cache; a fresh sequence is plainly causal
        else:  # new position i sees the cache and the new positions up to its own
            mask = torch.ones(n, visible.stop, dtype=torch.bool, device=inputs.device).tril(start)

        x = inputs
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(F.rms_norm(x, (hidden,), layer.attention_norm, self.eps)).split(layer.splits, dim=-1)
            q = rotate(q.view(batch, n, self.heads, self.head_dim).transpose(1, 2), cos, sin)
            k = rotate(k.view(batch, n, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            cache.keys[i, :, :, write] = k
            cache.values[i, :, :, write] = v.view(batch, n, self.kv_heads, self.head_dim).transpose(1, 2)
            attended = F.scaled_dot_product_attention(
                q, cache.keys[i, :, :, visible], cache.values[i, :, :, visible], attn_mask=mask,
                is_causal=mask is None and n > 1, enable_gqa=self.kv_heads != self.heads,
            )  # (batch, heads, n, head_dim)
            x = x + layer.out(attended.transpose(1, 2).reshape(batch, n, self.heads * self.head_dim))
            gate, up = layer.gate_up(F.rms_norm(x, (hidden,), layer.mlp_norm, self.eps)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        cache.length += n
        return F.rms_norm(x, (hidden,), self.final_norm, self.eps)

    def rebase(self, cache: WindowCache) -> None:
        """Turn every key in ``cache`` back by ``cache.window`` positions, and its rotary positions with them."""
        back = torch.tensor([-float(cache.window)], device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        angles = torch.outer(back, self.inv_freq).repeat(1, 2)  # (1, head_dim): a pure rotation, no scale
        cos, sin = (f(angles).to(cache.keys.dtype) for f in (torch.cos, torch.sin))
        cache.keys.copy_(rotate(cache.keys, cos, sin))
        cache.offset += cache.window
