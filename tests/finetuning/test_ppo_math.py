"""PPO math against hand-computed numbers, and a tiny seeded PPO learner that must find a two-token optimum."""

from __future__ import annotations

import math

import torch

from finetuning.trainers.ppo_math import (
    PPOSettings,
    approx_kl,
    gae,
    masked_mean,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)


def tensor(*rows: list[float]) -> torch.Tensor:
    """A float tensor from rows written out in the test."""
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected: torch.Tensor | list[list[float]] | float) -> bool:
    """Equal to 1e-6."""
    return torch.allclose(actual, torch.as_tensor(expected, dtype=torch.float32), atol=1e-6)


def test_token_rewards_put_the_score_on_the_last_answer_token() -> None:
    # KL terms: log π − log π_ref = [[0.5, 0, −1], [0, 1, pad]] → −0.1·that = [[−0.05, 0, 0.1], [0, −0.1, 0]];
    # scores 1 and 2 land on positions 2 and 1 (the second row has two tokens)
    logprobs = tensor([-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0])
    ref_logprobs = tensor([-1.5, -2.0, -2.0], [-1.0, -2.0, 5.0])
    rewards = token_rewards(logprobs, ref_logprobs, torch.tensor([1.0, 2.0]), tensor([1, 1, 1], [1, 1, 0]), 0.1)
    assert close(rewards, [[-0.05, 0.0, 1.1], [0.0, 1.9, 0.0]])


def test_gae_by_hand() -> None:
    # γ = 1, λ = 0.5, rewards [0, 0, 1], values [0.5, 0.6, 0.7]:
    # δ2 = 1 − 0.7 = 0.3 → A2 = 0.3; δ1 = 0.7 − 0.6 = 0.1 → A1 = 0.1 + 0.5·0.3 = 0.25; δ0 = 0.1 → A0 = 0.225
    advantages, returns = gae(tensor([0, 0, 1]), tensor([0.5, 0.6, 0.7]), tensor([1, 1, 1]), gamma=1.0, lam=0.5)
    assert close(advantages, [[0.225, 0.25, 0.3]])
    assert close(returns, [[0.725, 0.85, 1.0]])


def test_gae_discounts_and_stops_at_padding() -> None:
    # γ = 0.9, λ = 1, two tokens then padding (whose value 9 is ignored): δ1 = 1 − 0.4 = 0.6 → A1 = 0.6;
    # δ0 = 0.9·0.4 − 0.2 = 0.16 → A0 = 0.16 + 0.9·0.6 = 0.7; returns = A + V = [0.9, 1.0, 0]
    advantages, returns = gae(tensor([0, 1, 0]), tensor([0.2, 0.4, 9.0]), tensor([1, 1, 0]), gamma=0.9, lam=1.0)
    assert close(advantages, [[0.7, 0.6, 0.0]])
    assert close(returns, [[0.9, 1.0, 0.0]])


def test_whiten_uses_unmasked_entries_and_unbiased_variance() -> None:
    # [1, 2, 3]: mean 2, unbiased variance ((−1)² + 0 + 1²) / 2 = 1 → [−1, 0, 1]; the padded 100 stays 0
    assert close(whiten(tensor([1, 2, 3, 100]), tensor([1, 1, 1, 0])), [[-1.0, 0.0, 1.0, 0.0]])
    assert close(masked_mean(tensor([1, 2, 3, 100]), tensor([1, 1, 1, 0])), 2.0)


def test_policy_loss_clips_by_hand() -> None:
    # ratios [0.5, 1, 1.5, 0.5], advantages [1, −1, 1, −1], ε = 0.2; per token max(−Aρ, −A·clip(ρ)):
    # max(−0.5, −0.8) = −0.5; max(1, 1) = 1; max(−1.5, −1.2) = −1.2 (clipped); max(0.5, 0.8) = 0.8 (clipped)
    # mean = (−0.5 + 1 − 1.2 + 0.8) / 4 = 0.025, clip fraction 2/4
    logprobs = torch.log(tensor([0.5, 1.0, 1.5, 0.5]))
    loss, clipfrac = policy_loss(logprobs, torch.zeros(1, 4), tensor([1, -1, 1, -1]), torch.ones(1, 4), 0.2)
    assert close(loss, 0.025) and close(clipfrac, 0.5)


def test_value_loss_clips_by_hand() -> None:
    # old values 0, new [0.1, 0.5, 1.0] → clipped [0.1, 0.2, 0.2]; returns [1, 0, 1]:
    # max(0.81, 0.81) = 0.81; max(0.25, 0.04) = 0.25; max(0, 0.64) = 0.64 (clipped) → 0.5·1.7/3, clip fraction 1/3
    loss, clipfrac = value_loss(tensor([0.1, 0.5, 1.0]), torch.zeros(1, 3), tensor([1, 0, 1]), torch.ones(1, 3), 0.2)
    assert close(loss, 0.5 * 1.7 / 3) and close(clipfrac, 1 / 3)


def test_approx_kl_by_hand() -> None:
    # differences [0.1, −0.2] → 0.5·(0.01 + 0.04) / 2 = 0.0125
    assert close(approx_kl(tensor([0.1, -0.2]), torch.zeros(1, 2), torch.ones(1, 2)), 0.0125)


class TwoTokenPolicy(torch.nn.Module):
    """A tabular policy over two tokens from a vocabulary of 4, with a tabular value head: the second token's
    distribution and value depend on the first token."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Parameter(torch.zeros(4))
        self.second = torch.nn.Parameter(torch.zeros(4, 4))
        self.value_start = torch.nn.Parameter(torch.zeros(1))
        self.value_after = torch.nn.Parameter(torch.zeros(4))

    def logprobs(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, 2) log-probabilities of the given token pairs."""
        first = torch.log_softmax(self.first, dim=0)[tokens[:, 0]]
        second = torch.log_softmax(self.second[tokens[:, 0]], dim=1).gather(1, tokens[:, 1:]).squeeze(1)
        return torch.stack([first, second], dim=1)

    def values(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, 2) values before each token."""
        return torch.stack([self.value_start.expand(len(tokens)), self.value_after[tokens[:, 0]]], dim=1)

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, 2) sampled token pairs."""
        first = torch.multinomial(torch.softmax(self.first, 0), batch, replacement=True, generator=generator)
        second = torch.multinomial(torch.softmax(self.second[first], 1), 1, generator=generator).squeeze(1)
        return torch.stack([first, second], dim=1)

    def best_probability(self) -> float:
        """Probability of the optimal pair (2, 1)."""
        with torch.no_grad():
            return float(torch.softmax(self.first, 0)[2] * torch.softmax(self.second[2], 0)[1])


def test_ppo_learns_the_rewarded_token_pair() -> None:
    """Only the pair (2, 1) is rewarded (1/16 of uniform samples): PPO with GAE, whitening, clipped losses and a
    KL penalty toward the uniform start must make it the policy's choice."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    settings = PPOSettings(kl_coef=0.002, gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    policy = TwoTokenPolicy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.1)
    ref_logprobs_uniform = math.log(0.25)
    mask = torch.ones(64, 2)
    assert policy.best_probability() == 1 / 16
    for _ in range(20):  # seeds 0-4 all pass 0.97 by update 10 and 0.99 by update 15
        with torch.no_grad():
            tokens = policy.sample(64, generator)
            old_logprobs, old_values = policy.logprobs(tokens), policy.values(tokens)
            scores = ((tokens[:, 0] == 2) & (tokens[:, 1] == 1)).float()
            rewards = token_rewards(old_logprobs, torch.full_like(old_logprobs, ref_logprobs_uniform), scores, mask,
                                    settings.kl_coef)
            advantages, returns = gae(rewards, old_values, mask, settings.gamma, settings.lam)
            advantages = whiten(advantages, mask)
        for _ in range(settings.ppo_epochs):
            pg_loss, _ = policy_loss(policy.logprobs(tokens), old_logprobs, advantages, mask, settings.cliprange)
            vf_loss, _ = value_loss(policy.values(tokens), old_values, returns, mask, settings.cliprange_value)
            optimizer.zero_grad()
            (pg_loss + settings.vf_coef * vf_loss).backward()
            optimizer.step()
    assert policy.best_probability() > 0.9
