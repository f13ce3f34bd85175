"""Rectified flow: the loss, the Euler sampler and the speaking head, on problems whose answer is known."""

import pytest
import torch

from michi_lite.flow import SpeakingHead, euler_sample, flow_matching_loss


def test_the_exact_velocity_of_a_point_mass_has_zero_loss_and_one_step_lands_on_it():
    target = torch.tensor([[2.0, -1.0]])

    def exact(x_t, t, cond):  # the straight path to a single point: v = (x1 - x_t) / (1 - t)
        return (target - x_t) / (1 - t[:, None])

    assert flow_matching_loss(exact, target.expand(64, 2), torch.zeros(64, 1)) < 1e-10
    for steps in (1, 3):
        assert torch.allclose(euler_sample(exact, torch.zeros(5, 1), 2, steps), target.expand(5, 2), atol=1e-5)


def test_euler_takes_the_asked_number_of_equal_steps():
    times = []

    def record(x_t, t, cond):
        times.append(float(t[0]))
        return torch.ones_like(x_t)

    out = euler_sample(record, torch.zeros(3, 1), 4, steps=4, noise=torch.zeros(3, 4))
    assert times == [0.0, 0.25, 0.5, 0.75]
    assert torch.allclose(out, torch.ones(3, 4))  # velocity 1 for a time of 1
    with pytest.raises(ValueError, match="at least 1"):
        euler_sample(record, torch.zeros(1, 1), 4, steps=0)


def test_a_new_head_guesses_the_zero_patch_and_heads_straight_for_it():
    head = SpeakingHead(patch_dim=6, cond_dim=3, width=16, depth=2)
    x_t, t = torch.randn(4, 6), torch.rand(4) * 0.9
    assert torch.equal(head.denoise(x_t, t, torch.randn(4, 3)), torch.zeros(4, 6))
    assert torch.allclose(head(x_t, t, torch.randn(4, 3)), -x_t / (1 - t[:, None]))


def test_the_head_trains_on_its_clean_patch_error_not_the_velocity_error():
    """A guess off by the same amount costs the same near noise and near data: no 1 / (1 - t)^2 weight."""
    head = SpeakingHead(patch_dim=6, cond_dim=3, width=16, depth=2)
    data, cond = torch.randn(512, 6), torch.randn(512, 3)
    head.denoise = lambda x_t, t, c: data + 0.5  # every guess is 0.5 off in every number
    assert abs(head.loss(data, cond).item() - 0.25) < 1e-6
    assert flow_matching_loss(head, data, cond) > 1.0  # the same guesses, scored as velocities


def test_the_head_learns_a_conditional_two_mode_toy_and_few_steps_suffice():
    """Condition +1 -> data near (2, 2), condition -1 -> near (-2, -2): samples must land by their condition."""
    torch.manual_seed(0)
    head = SpeakingHead(patch_dim=2, cond_dim=1, width=32, depth=2)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(400):
        cond = torch.randint(0, 2, (128, 1)).float() * 2 - 1
        data = 2 * cond.expand(128, 2) + 0.1 * torch.randn(128, 2)
        loss = head.loss(data, cond)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cond = torch.tensor([[1.0], [-1.0]]).repeat(100, 1)
    for steps in (1, 4):
        samples = head.sample(cond, steps, generator=torch.Generator().manual_seed(1))
        error = (samples - 2 * cond.expand(-1, 2)).norm(dim=-1)
        assert error.median() < 0.5, (steps, float(error.median()))
