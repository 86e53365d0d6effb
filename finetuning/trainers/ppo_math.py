"""PPO's arithmetic on tensors, with no model: what MAPoRL's multi-agent PPO computes for each turn's answers.

Kept apart from the trainer so every formula is checked against hand-computed numbers. Per-token tensors are
(batch, tokens): one row per answer, ``mask`` 1 on the answer's tokens and 0 on padding. Settings and formulas
follow the official MAPoRL code (a TRL 0.9-era PPOv2, training.md §1.2 and §1.3) and the paper's §3.2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PPOSettings:
    """PPO's constants, defaulting to MAPoRL's official configs (training.md §1.3).

    Args:
        kl_coef: λ_KL, the per-token penalty on log π − log π_ref that keeps the policy near its reference.
        gamma: discount between tokens in GAE (1: an answer's tokens are not discounted).
        lam: GAE's λ, trading the value baseline's bias against the sampled returns' variance.
        cliprange: ε of the clipped policy ratio.
        cliprange_value: how far a value may move from its rollout value before its loss is clipped.
        vf_coef: weight of the value loss beside the policy loss.
        ppo_epochs: passes over one rollout batch.
    """

    kl_coef: float = 0.002
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 4


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean over the unmasked entries only, so padding never dilutes a loss or a statistic."""
    return (values * mask).sum() / mask.sum()


def token_rewards(logprobs: Tensor, ref_logprobs: Tensor, scores: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards: −kl_coef·(log π − log π_ref) on every token, plus the answer's reward on its last token.

    The KL term is the sampled estimate of the paper's λ_KL·KL(π_ref ‖ π) per token; the scalar reward (MAPoRL's
    influence reward) comes only when the answer is complete.

    Args:
        logprobs: (batch, tokens) log-probabilities of the sampled tokens under the rollout policy.
        ref_logprobs: the same under the reference policy.
        scores: (batch,) each answer's reward.
        mask: (batch, tokens) 1 on answer tokens; each row needs at least one.
        kl_coef: λ_KL.
    """
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    last = (mask * positions).argmax(dim=1)  # the last unmasked position, whatever the padding side
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores
    return rewards


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns (Schulman et al. 2016), computed backwards over the tokens.

    δ_t = r_t + γ·V_{t+1} − V_t and A_t = δ_t + γλ·A_{t+1}; past the last token the value is 0, so an answer's
    final advantage is its reward minus its value. Returns = advantages + values are the value function's targets.

    Args:
        rewards: (batch, tokens) per-token rewards (``token_rewards``).
        values: (batch, tokens) the value function's estimates at rollout time.
        mask: (batch, tokens) 1 on answer tokens; padding must come after them.
        gamma: discount between tokens.
        lam: GAE's λ.
    """
    rewards, values = rewards * mask, values * mask
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    backwards = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        backwards.append(running)
        next_value = values[:, t]
    advantages = torch.stack(backwards[::-1], dim=1)
    return advantages, advantages + values


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean and unit variance over the unmasked entries (padding stays 0), so no batch sets the step size.

    The variance is unbiased (n − 1), as in the official code's TRL; at least two entries must be unmasked.
    """
    mean = masked_mean(values, mask)
    count = mask.sum()
    variance = masked_mean((values - mean) ** 2, mask) * count / (count - 1)
    return (values - mean) * torch.rsqrt(variance + eps) * mask


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate loss and the fraction of tokens where clipping bound it.

    loss = mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))) with ρ = π/π_old: a step gains nothing from moving a token's
    probability ratio beyond 1 ± ε, which keeps each update near the policy that sampled the data.

    Args:
        logprobs: (batch, tokens) log-probabilities under the policy being trained.
        old_logprobs: the same under the rollout policy.
        advantages: (batch, tokens) whitened advantages.
        mask: (batch, tokens) 1 on answer tokens.
        cliprange: ε.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, Tensor]:
    """The clipped value loss, 0.5·mean(max((V − G)², (V_clip − G)²)), and the fraction of tokens it clipped.

    V_clip = V_old + clip(V − V_old, ±cliprange_value): like the policy, the value head gains nothing from moving
    far from its rollout estimate in one step.

    Args:
        values: (batch, tokens) the value head's current estimates.
        old_values: its estimates at rollout time.
        returns: (batch, tokens) the targets (``gae``'s returns).
        mask: (batch, tokens) 1 on answer tokens.
        cliprange_value: how far a value may move before clipping.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), mask)


def approx_kl(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """0.5·mean((log π − log π_old)²): how far an epoch moved the policy from the rollout one, for monitoring."""
    return 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)
