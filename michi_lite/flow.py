"""Rectified flow: the speaking head that samples one 80 ms audio patch per frame.

MichiAI predicts each frame's audio as one continuous vector instead of 8-32
codebook tokens. A continuous vector has no softmax to sample from, so the
head learns a *flow*: a velocity field that carries Gaussian noise to the
data along straight lines (rectified flow, Liu et al. 2022), and sampling
integrates it in a few Euler steps.

* path: x_t = (1 - t) x_0 + t x_1, with x_0 ~ N(0, I) noise and x_1 a data point;
* target velocity: d x_t / dt = x_1 - x_0, the same at every t of one path;
* loss: the squared error of the predicted velocity at a random t;
* sampling: start at noise, take ``steps`` Euler steps of size 1 / steps.

Straight paths are why few steps suffice: where the straight lines from
noise to data seldom cross, the learned field is nearly constant along
each, and one Euler step lands near the data.

``SpeakingHead`` is the velocity network: an MLP whose residual blocks are
modulated (adaptive layer norm, as in DiT) by the condition, the backbone's
hidden state and the current text token's embedding, and by the time t.

It predicts the clean patch, not the velocity, and turns its guess x̂_1 into
the velocity (x̂_1 - x_t) / (1 - t) (x-prediction; Li and He, "Back to
Basics: Let Denoising Generative Models Denoise", 2025). A velocity holds
the noise x_0 in every one of the patch's 640 numbers, and an MLP narrower
than that cannot carry it through: trained to predict velocities, a
256-wide head left its samples as rough as noise. A clean mel patch lies
near a low-dimensional set that a narrow network can represent, and the
noise term comes from x_t exactly. Notebook 03 shows both.

It trains on the error of that guess, |x̂_1 - x_1|², which is the velocity
error times (1 - t)². The velocity error itself would weigh the nearly
clean end of the path, where the head only has to remove a little noise, up
to 1 / 0.05² = 400 times more than the noisy end, where the condition alone
must choose the sound; few-step sampling leans on exactly that end.

PRIOR. A model that can already regress the patch (the acoustic model's mel
L1 head) hands that guess to the head as a ``prior`` mu: the paths start
from noise centred on it instead of on zero (Grad-TTS centres its diffusion
on the text encoder's mel the same way; Popov et al., 2021), and the network
reads x_t - mu and guesses x_1 - mu: it learns the flow of the patch's
difference from its prior, and a new head guesses none. At a temperature of
0 the sampler starts on the prior itself and only refines it; without a
prior, the lite acoustic model's 4-step speech was heard worse than its
plain regression (``data/acoustic/README.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

VelocityField = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t, cond) -> v


def path_point(data: torch.Tensor, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random point on each data point's straight path from noise: (noise, t (batch,), x_t).

    Fresh noise is drawn unless ``noise`` is given.
    """
    if noise is None:
        noise = torch.randn(data.shape, generator=generator, device=data.device, dtype=data.dtype)
    t = torch.rand(data.shape[0], generator=generator, device=data.device, dtype=data.dtype)
    return noise, t, (1 - t[:, None]) * noise + t[:, None] * data


def flow_matching_loss(velocity: VelocityField, data: torch.Tensor, cond: torch.Tensor,
                       generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Rectified-flow loss on a batch of data points (batch, dim) with their conditions (batch, cond_dim).

    Each point is paired with fresh noise, or with the given ``noise`` (reflow
    pairs each sample with the noise it was generated from).
    """
    noise, t, x_t = path_point(data, generator, noise)
    return F.mse_loss(velocity(x_t, t, cond), data - noise)


@torch.no_grad()
def euler_sample(velocity: VelocityField, cond: torch.Tensor, dim: int, steps: int,
                 noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = v(x, t, cond) from noise at t = 0 to t = 1 in ``steps`` equal Euler steps.

    ``temperature`` scales fresh noise: below 1 the samples keep closer to
    the condition's most likely patch (Grad-TTS and Matcha-TTS sample so).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    x = noise if noise is not None else temperature * torch.randn(cond.shape[0], dim, generator=generator,
                                                                  device=cond.device)
    for k in range(steps):
        t = torch.full((x.shape[0],), k / steps, device=x.device, dtype=x.dtype)
        x = x + velocity(x, t, cond) / steps
    return x


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1], (batch,) -> (batch, dim), over frequencies 1 to 1000."""
    freqs = torch.exp(torch.linspace(0, math.log(1000), dim // 2, device=t.device))
    angles = 2 * math.pi * t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class AdaLNBlock(nn.Module):
    """A residual MLP block whose norm's scale and shift, and the residual's gate, come from the condition.

    The modulation starts at zero, so every block starts as the identity.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.modulation = nn.Linear(width, 3 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(F.silu(c)).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


MIN_REMAINING_TIME = 0.05  # 1 - t is clipped here when x-prediction is turned into a velocity


class SpeakingHead(nn.Module):
    """The velocity field v(x_t, t, cond) of one frame's audio patch, through a prediction of the clean patch.

    ``cond`` is the backbone's hidden state and the current text token's
    embedding, concatenated (batch, cond_dim); ``x_t`` a noisy patch
    (batch, patch_dim); ``t`` (batch,) in [0, 1].
    """

    def __init__(self, patch_dim: int, cond_dim: int, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.patch_dim = patch_dim
        self.patch_in = nn.Linear(patch_dim, width)
        self.cond_in = nn.Linear(cond_dim, width)
        self.time_in = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out_modulation = nn.Linear(width, 2 * width)
        self.patch_out = nn.Linear(width, patch_dim)
        for layer in (self.out_modulation, self.patch_out):  # starts predicting an all-zero (average) patch
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                prior: torch.Tensor | None = None) -> torch.Tensor:
        remaining = (1 - t[:, None]).clamp(min=MIN_REMAINING_TIME)
        return (self.denoise(x_t, t, cond, prior) - x_t) / remaining  # (batch, patch_dim)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                prior: torch.Tensor | None = None) -> torch.Tensor:
        """The network itself: its guess of the clean patch x_1 (batch, patch_dim).

        Given a ``prior``, it reads and guesses the patch's difference from it.
        """
        c = self.cond_in(cond) + self.time_in(time_embedding(t, self.patch_in.out_features))
        x = self.patch_in(x_t if prior is None else x_t - prior)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.out_modulation(F.silu(c)).chunk(2, dim=-1)
        guess = self.patch_out(self.out_norm(x) * (1 + scale) + shift)  # (batch, patch_dim)
        return guess if prior is None else prior + guess

    def loss(self, patches: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None,
             prior: torch.Tensor | None = None) -> torch.Tensor:
        """The clean-patch error at a random point of each patch's straight path (see the module docstring).

        Given a ``prior`` (batch, patch_dim), the paths start from noise
        around it instead of around zero, and the network guesses the change
        to it (``PRIOR`` in the module docstring).
        """
        noise = torch.randn(patches.shape, generator=generator, device=patches.device, dtype=patches.dtype)
        _, t, x_t = path_point(patches, generator, noise if prior is None else prior + noise)
        return F.mse_loss(self.denoise(x_t, t, cond, prior), patches)

    def sample(self, cond: torch.Tensor, steps: int = 4, generator: torch.Generator | None = None,
               temperature: float = 1.0, prior: torch.Tensor | None = None) -> torch.Tensor:
        """One patch per condition row, in ``steps`` Euler steps from fresh noise (scaled by ``temperature``).

        The noise is centred on ``prior`` if given, as in training.
        """
        if prior is None:
            return euler_sample(self, cond, self.patch_dim, steps, generator=generator, temperature=temperature)
        noise = temperature * torch.randn(prior.shape, generator=generator, device=prior.device, dtype=prior.dtype)
        return euler_sample(lambda x, t, c: self(x, t, c, prior), cond, self.patch_dim, steps, noise=prior + noise)
