"""Rectified flow: the loss, the Euler sampler and the speaking head, on problems whose answer is known."""

import pytest
import torch

from michi_lite.flow import SpeakingHead, euler_sample, flow_matching_loss


def test_the_exact_velocity_of_a_point_mass_has_zero_loss_and_one_step_lands_on_it():
    target = torch.tensor([[2.0, -1.0]])

    def exact(x_t, t, cond):  # the straight path to a single point: v = (x1 - x_t) / (1 - t)
        return (target - x_t) / (1 - t[:, None])

    torch.manual_seed(0)  # the loss draws times and noise: where t nears 1, float32 leaves up to about 1e-9
    assert flow_matching_loss(exact, target.expand(64, 2), torch.zeros(64, 1)) < 1e-8
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
    head.denoise = lambda x_t, t, c, prior=None: data + 0.5  # every guess is 0.5 off in every number
    assert abs(head.loss(data, cond).item() - 0.25) < 1e-6
    assert flow_matching_loss(head, data, cond) > 1.0  # the same guesses, scored as velocities


def two_mode_head(steps: int, with_prior: bool = False) -> SpeakingHead:
    """A head trained on condition +1 -> data near (2, 2), -1 -> near (-2, -2); the prior, if any, is (c, c)."""
    torch.manual_seed(0)
    head = SpeakingHead(patch_dim=2, cond_dim=1, width=32, depth=2)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        cond = torch.randint(0, 2, (128, 1)).float() * 2 - 1
        data = 2 * cond.expand(128, 2) + 0.1 * torch.randn(128, 2)
        loss = head.loss(data, cond, prior=cond.expand(128, 2) if with_prior else None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head


def test_the_head_learns_a_conditional_two_mode_toy_and_few_steps_suffice():
    """Samples must land by their condition."""
    head = two_mode_head(400)
    cond = torch.tensor([[1.0], [-1.0]]).repeat(100, 1)
    for steps in (1, 4):
        samples = head.sample(cond, steps, generator=torch.Generator().manual_seed(1))
        error = (samples - 2 * cond.expand(-1, 2)).norm(dim=-1)
        assert error.median() < 0.5, (steps, float(error.median()))


def test_with_a_prior_a_new_head_keeps_it_and_the_paths_start_around_it():
    head = SpeakingHead(patch_dim=6, cond_dim=3, width=16, depth=2)
    prior, cond = torch.randn(4, 6), torch.randn(4, 3)
    assert torch.equal(head.sample(cond, 4, temperature=0.0, prior=prior), prior)  # nothing to refine yet

    data, far, starts = torch.randn(4096, 6), torch.full((4096, 6), 5.0), []

    def perfect(x_t, t, c, prior=None):
        starts.append((x_t - t[:, None] * data) / (1 - t[:, None]))  # x_t = (1 - t) x_0 + t x_1, solved for x_0
        return data

    head.denoise = perfect
    assert head.loss(data, torch.zeros(4096, 3), prior=far) == 0
    assert torch.allclose(starts[0].mean(0), far[0], atol=0.1)  # noise around the prior
    assert torch.allclose(starts[0].std(0), torch.ones(6), atol=0.1)


def test_a_head_refines_a_prior_that_is_half_way_to_the_data():
    """The prior holds half of each point's offset from zero; samples must land on the points, not the prior."""
    head = two_mode_head(300, with_prior=True)
    cond = torch.tensor([[1.0], [-1.0]]).repeat(100, 1)
    for temperature in (0.0, 1.0):
        samples = head.sample(cond, 4, generator=torch.Generator().manual_seed(1), temperature=temperature,
                              prior=cond.expand(-1, 2))
        error = (samples - 2 * cond.expand(-1, 2)).norm(dim=-1)
        assert error.median() < 0.3, (temperature, float(error.median()))
