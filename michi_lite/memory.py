"""What a joint training step holds in memory: a model of it, to size a run for a GPU before renting one.

A step of ``train joint`` (``SpeakerTrainer``) keeps four things alive at its
peak, the end of the forward pass, when backward starts:

1. **Weights**: every parameter in float32 (the backbone is frozen, but
   autocast reads it from float32 and casts per layer). bf16 autocast keeps
   a cast copy of each layer's weights only while that layer runs.
2. **What the optimizer needs** for the trained parameters only (LoRA, the
   stream embeddings, the heads): a float32 gradient and AdamW's two float32
   moments, 12 bytes a parameter.
3. **Activations** saved for backward, per backbone layer and position. A
   Llama layer of width ``h`` and MLP width ``m`` needs about ``8 h + 4 m``
   numbers a position by count (its input and the normed one, q, k and v,
   the attention output, the second norm's input and output, the MLP's
   gate, up, their SiLU and product; the attention runs fused, so no score
   matrix is kept). Eager PyTorch keeps more: the RMSNorm's float32
   intermediates, RoPE's rotated copies, the key and value heads repeated
   for grouped-query attention. ``bench joint`` measured 1.7 times the
   count (``michi``, float32, on a CPU; data/joint/README.md), so the model
   uses ``14 h + 7 m``, in the autocast type. With activation checkpointing
   a layer keeps only its input (``h`` numbers a position) and recomputes
   the rest in backward, one layer at a time.
4. **Logits**: the text head scores every position against the whole
   vocabulary in float32, and four such tensors live at once (the scores,
   the masked positions' copy, their log-softmax, its gradient); the keep
   loss does the same for each text token, for the adapted and the
   pretrained backbone.

The speaking head, the phoneme reader, the listener's streams and what the
allocator holds back are left to a 20% margin. ``estimate`` adds the four
up; ``bench joint`` measures a step and prints the estimate beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GB = 1024 ** 3
MARGIN = 1.20  # what the model leaves out: small modules, allocator slack, the speaking head's samples


@dataclass(frozen=True)
class StepShape:
    """A joint training step's size: the model's and the batch's."""

    parameters: int  # every parameter, frozen ones included
    trained_parameters: int
    layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    batch_size: int  # dialogues a step (on one GPU)
    frames: int  # backbone positions per dialogue: its 80 ms frames
    text_tokens: int  # the keep loss's plain-text tokens, over the whole batch


def estimate(shape: StepShape, bf16: bool, checkpointing: bool) -> dict[str, float]:
    """Peak memory of a step, GB, by part (see the module docstring), and their sum with the margin."""
    s = shape
    positions = s.batch_size * s.frames
    act_bytes = 2 if bf16 else 4
    layer = 14 * s.hidden_size + 7 * s.intermediate_size  # numbers a position, a layer's activations (measured)
    per_layer = s.hidden_size if checkpointing else layer
    recompute = positions * layer * act_bytes if checkpointing else 0  # the layer being recomputed
    parts = {
        "weights": 4 * s.parameters,
        "gradients_and_adam": 12 * s.trained_parameters,
        "activations": positions * s.layers * per_layer * act_bytes + recompute,
        "logits": 4 * 4 * s.vocab_size * (positions + 2 * s.text_tokens),
    }
    gb = {name: value / GB for name, value in parts.items()}
    gb["total"] = MARGIN * sum(gb.values())
    return gb


def largest_batch(shape: StepShape, budget_gb: float, bf16: bool = True, checkpointing: bool = True) -> int:
    """The most dialogues of ``shape.frames`` frames a step whose estimate stays within ``budget_gb`` (0: none)."""
    tokens_per_dialogue = shape.text_tokens / max(1, shape.batch_size)
    batch = 0
    while True:
        bigger = StepShape(**{**asdict(shape), "batch_size": batch + 1,
                              "text_tokens": round(tokens_per_dialogue * (batch + 1))})
        if estimate(bigger, bf16, checkpointing)["total"] > budget_gb:
            return batch
        batch += 1
