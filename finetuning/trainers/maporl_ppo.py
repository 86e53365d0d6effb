"""MAPoRL's multi-agent PPO (Park et al. 2025, §3.2): one base model, one LoRA policy per trained turn.

The official code (training.md §1.3) keeps one base model with LoRA adapters ``policy_<turn>``, shared by every
agent that runs that model, a frozen reference (here: the base model with the adapters disabled, no extra copy),
and value heads. Here each trained turn has a linear value head (hidden → 1) over the hidden states of its own
policy adapter, instead of the official code's separate ``value_<turn>`` adapters: one forward pass gives both
log-probabilities and values, and the value loss (weighted by ``vf_coef``) also shapes the policy adapter, as in a
shared-trunk actor-critic. Dropout is never active (the model stays in eval mode), as TRL's PPO disables it, so a
minibatch's first ratio π/π_old is exactly 1.

One ``update`` takes the answers of one rollout batch (debates played with the current weights), keeps those of
the turn the schedule trains now, and runs ``ppo_epochs`` passes of minibatch steps over them: token rewards with
the KL penalty, GAE, whitened advantages, clipped policy and value losses (``finetuning.trainers.ppo_math``).
Each update appends one JSON line to ``ppo_log.jsonl``; ``save``/``resume`` carry adapters, value heads,
optimizer, update counter and random states, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn

from coral.atomic import write_atomic
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

LOG_FILE = "ppo_log.jsonl"
STATE_FILE = "state.json"
"""Written last into a checkpoint folder: a folder without it is an interrupted save."""
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TurnSchedule:
    """Which turn (round index, 0-based) each PPO update trains; turn 0, the independent answer, never is.

    Defaults are the official code's ``turn_based_training`` for 3 turns: turn 1 for the first 20 updates, then
    turns 2 and 1 alternating every 40 updates (the later turn first).

    Args:
        first_turn: the turn trained during the first ``first_updates`` updates.
        first_updates: how many updates train ``first_turn`` before the cycle starts.
        cycle: the turns trained in turn after that, ``period`` updates each, repeating.
        period: updates per entry of ``cycle``.
    """

    first_turn: int = 1
    first_updates: int = 20
    cycle: tuple[int, ...] = (2, 1)
    period: int = 40

    def __post_init__(self) -> None:
        if min(self.turns()) < 1:
            raise ValueError(f"turn 0 (the independent answer) is never trained, got turns {self.turns()}")
        if self.first_updates < 0 or self.period < 1 or not self.cycle:
            raise ValueError("a schedule needs first_updates >= 0, period >= 1 and a non-empty cycle")

    def turns(self) -> list[int]:
        """Every turn the schedule trains, sorted: each gets a policy adapter and a value head."""
        return sorted({self.first_turn, *self.cycle})

    def turn_at(self, update: int) -> int:
        """The turn update number ``update`` (0-based) trains."""
        if update < self.first_updates:
            return self.first_turn
        return self.cycle[(update - self.first_updates) // self.period % len(self.cycle)]


@dataclass(frozen=True)
class TrainerSettings:
    """The PPO trainer's settings; defaults are the official MAPoRL configs' (training.md §1.3).

    Args:
        ppo: PPO's constants (KL 0.002, GAE λ 0.95, γ 1, clip 0.2, vf_coef 0.1, 4 epochs).
        schedule: which turn each update trains.
        lora_r: LoRA rank of each policy adapter.
        lora_alpha: LoRA scaling numerator.
        lora_targets: projections that get LoRA.
        learning_rate: the optimizer's step size (official: 1e-5).
        optimizer: ``adamw`` (torch) or ``adafactor`` (transformers, the official choice; less memory).
        minibatches: minibatches per rollout batch in each epoch (official ``num_mini_batches`` 8; capped at the
            batch's answers).
        temperature: the sampling temperature, by which logits are divided when log-probabilities are computed, so
            they are those of the distribution that sampled (official: 0.7).
        max_grad_norm: gradient clipping.
        seed: seeds LoRA's initialisation and the minibatch order.
    """

    ppo: PPOSettings = field(default_factory=PPOSettings)
    schedule: TurnSchedule = field(default_factory=TurnSchedule)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = LORA_TARGETS
    learning_rate: float = 1e-5
    optimizer: str = "adamw"
    minibatches: int = 8
    temperature: float = 0.7
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "adafactor"):
            raise ValueError(f"optimizer must be 'adamw' or 'adafactor', got {self.optimizer!r}")
        if self.temperature <= 0:
            raise ValueError("PPO samples: temperature must be > 0 (greedy answers have no log-probabilities)")


@dataclass(frozen=True)
class Rollout:
    """One agent's answer in one debate turn, as PPO needs it.

    Args:
        prompt_ids: the prompt's tokens (chat template applied), exactly as the policy was given them.
        response_ids: the sampled tokens.
        reward: the answer's reward (``coral.rewards.turn_rewards``), put on its last token.
        turn: the debate round it answers (selects the policy adapter).
        agent: the speaker, for logs.
        correct: whether it was graded correct, for logs.
        logprobs: the sampler's log-probability of each response token, when it gave them (the embedded engine
            does). The update recomputes them with its own forward pass (so a minibatch's first ratio is exactly 1)
            and logs the largest difference: stale weights in the sampler or a temperature mismatch show up there.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    reward: float
    turn: int
    agent: str
    correct: bool | None = None
    logprobs: list[float] | None = None


def policy_name(turn: int) -> str:
    """The LoRA adapter of ``turn``, as the official code names it."""
    return f"policy_{turn}"


class MultiAgentPPO:
    """The policies, value heads and optimizer of MAPoRL's PPO, with updates, logs and checkpoints.

    Args:
        model: a transformers causal LM (the base weights stay frozen).
        settings: see ``TrainerSettings``.
        out_dir: where ``ppo_log.jsonl`` goes.
    """

    def __init__(self, model: Any, settings: TrainerSettings, out_dir: Path) -> None:
        self.settings = settings
        self.out_dir = out_dir
        self.update_count = 0
        self.rng = random.Random(settings.seed)
        torch.manual_seed(settings.seed)
        targets = list(settings.lora_targets)
        lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0, target_modules=targets)
        turns = settings.schedule.turns()
        self.model: PeftModel = get_peft_model(model, lora, adapter_name=policy_name(turns[0]))
        for turn in turns[1:]:
            self.model.add_adapter(policy_name(turn), lora)
        self.model.eval()
        hidden = model.config.hidden_size
        self.device = next(model.parameters()).device
        self.value_heads = nn.ModuleDict({str(turn): _zero_head(hidden) for turn in turns}).to(self.device)
        self.optimizer = _optimizer(self.trainable(), settings)

    def trainable(self) -> list[nn.Parameter]:
        """Every adapter's LoRA weights and every value head: the only parameters PPO changes."""
        lora = [p for name, p in self.model.named_parameters() if "lora_" in name]
        return lora + list(self.value_heads.parameters())

    def adapter(self, turn: int) -> str | None:
        """The policy adapter that answers ``turn``; None for a turn the schedule never trains (the base answers)."""
        return policy_name(turn) if turn in self.settings.schedule.turns() else None

    # ------------------------------------------------------------------------------------------- one update
    def update(self, rollouts: Sequence[Rollout]) -> dict[str, Any]:
        """One PPO update of the scheduled turn's policy on a rollout batch; returns (and logs) its statistics.

        ``rollouts`` holds every answer of the batch's debates; answers of other turns only enter the logs.
        """
        started = time.perf_counter()
        turn = self.settings.schedule.turn_at(self.update_count)
        batch = [r for r in rollouts if r.turn == turn]
        if len(batch) < 2:
            raise ValueError(f"update {self.update_count} trains turn {turn}, which has {len(batch)} answers (< 2)")
        self.model.set_adapter(policy_name(turn))
        ppo = self.settings.ppo
        packed = _pack(batch, self.model.config.pad_token_id or 0)
        ids, attention, positions, mask, targets = (tensor.to(self.device) for tensor in packed)
        rewards_tensor = torch.tensor([r.reward for r in batch], dtype=torch.float32, device=self.device)
        with torch.no_grad():
            old_logprobs, old_values = self._forward(ids, attention, positions, targets, turn)
            with self.model.disable_adapter():
                ref_logprobs, _ = self._forward(ids, attention, positions, targets, None)
            rewards = token_rewards(old_logprobs, ref_logprobs, rewards_tensor, mask, ppo.kl_coef)
            advantages, returns = gae(rewards, old_values, mask, ppo.gamma, ppo.lam)
            advantages = whiten(advantages, mask)
        steps: dict[str, list[float]] = defaultdict(list)
        chunks = min(self.settings.minibatches, len(batch))
        for _ in range(ppo.ppo_epochs):
            order = list(range(len(batch)))
            self.rng.shuffle(order)
            for part in range(chunks):
                rows = torch.tensor(order[part::chunks], device=self.device)
                logprobs, values = self._forward(ids[rows], attention[rows], positions[rows], targets[rows], turn)
                m = mask[rows]
                p_loss, clip = policy_loss(logprobs, old_logprobs[rows], advantages[rows], m, ppo.cliprange)
                v_loss, v_clip = value_loss(values, old_values[rows], returns[rows], m, ppo.cliprange_value)
                self.optimizer.zero_grad()
                (p_loss + ppo.vf_coef * v_loss).backward()
                nn.utils.clip_grad_norm_(self.trainable(), self.settings.max_grad_norm)
                self.optimizer.step()
                moved = approx_kl(logprobs, old_logprobs[rows], m)
                for name, value in (("policy_loss", p_loss), ("value_loss", v_loss), ("clip_frac", clip),
                                    ("value_clip_frac", v_clip), ("approx_kl", moved)):
                    steps[name].append(float(value.detach()))
        kl_per_answer = ((old_logprobs - ref_logprobs) * mask).sum(dim=1)
        stats = {
            "update": self.update_count,
            "turn": turn,
            "answers": len(batch),
            "reward": float(rewards_tensor.mean()),
            "kl": float(kl_per_answer.mean()),
            "mean_value": float(masked_mean(old_values, mask)),
            "sampler_logprob_gap": _sampler_gap(batch, old_logprobs),
            **{name: sum(values) / len(values) for name, values in steps.items()},
            **_by_turn_and_agent(rollouts),
            "seconds": time.perf_counter() - started,
        }
        self.update_count += 1
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / LOG_FILE).open("a", encoding="utf-8") as log:
            log.write(json.dumps(stats) + "\n")
        return stats

    def _forward(
        self, ids: Tensor, attention: Tensor, positions: Tensor, targets: Tensor, turn: int | None
    ) -> tuple[Tensor, Tensor]:
        """Log-probabilities of the response tokens and the value estimates before each, (batch, response).

        ``positions[i, j]`` is where the token predicting response token j sits; only those rows of the logits
        are normalised, so memory grows with the response, not with prompt × vocabulary.
        """
        output = self.model(input_ids=ids, attention_mask=attention, output_hidden_states=True)
        rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1)
        logits = output.logits[rows, positions] / self.settings.temperature
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(2, targets.unsqueeze(2)).squeeze(2)
        if turn is None:
            return logprobs, torch.zeros_like(logprobs)
        hidden = output.hidden_states[-1][rows, positions]
        return logprobs, self.value_heads[str(turn)](hidden.float()).squeeze(2)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self, folder: Path) -> None:
        """Write a checkpoint that ``resume`` continues from; the old one is replaced only once this one is whole.

        ``adapters/`` holds the policy adapters in peft's format (load them on the base model with peft).
        """
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(str(tmp / "adapters"), selected_adapters=list(self.model.peft_config))
        trainable = {name: p for name, p in self.model.named_parameters() if "lora_" in name}
        torch.save({"lora": trainable, "value_heads": self.value_heads.state_dict()}, tmp / "weights.pt")
        torch.save({"optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "optim.pt")
        state = {"update": self.update_count, "rng": _jsonable(self.rng.getstate()), "settings": asdict(self.settings)}
        write_atomic(tmp / STATE_FILE, json.dumps(state, indent=2).encode())
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    def resume(self, folder: Path) -> None:
        """Load a checkpoint written by ``save``: weights, optimizer, update counter and random states."""
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        weights = torch.load(folder / "weights.pt", weights_only=True, map_location=self.device)
        own = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in weights["lora"].items():
                own[name].copy_(value)
        self.value_heads.load_state_dict(weights["value_heads"])
        optim = torch.load(folder / "optim.pt", weights_only=True, map_location="cpu")
        self.optimizer.load_state_dict(optim["optimizer"])
        torch.set_rng_state(optim["torch_rng"])
        self.rng.setstate(_tupled(state["rng"]))
        self.update_count = int(state["update"])


def checkpoint_update(folder: Path) -> int | None:
    """The update counter of a complete checkpoint in ``folder``; None when there is none (or it is unreadable)."""
    try:
        return int(json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["update"])
    except (OSError, ValueError, KeyError):
        return None


def _zero_head(hidden: int) -> nn.Linear:
    """A value head that starts at 0 for every state, so the first advantages are the rewards themselves."""
    head = nn.Linear(hidden, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def _optimizer(params: list[nn.Parameter], settings: TrainerSettings) -> torch.optim.Optimizer:
    """AdamW, or Adafactor as the official code (no second-moment matrix per weight: less memory at 8B)."""
    if settings.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=settings.learning_rate, scale_parameter=False, relative_step=False)
    return torch.optim.AdamW(params, lr=settings.learning_rate)


def _pack(batch: Sequence[Rollout], pad: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Right-padded prompt+response ids and attention, and per response token its predicting position and id.

    Returns (ids, attention, positions, mask, targets); the last three are (batch, longest response), ``mask`` 1
    on real response tokens (padding positions point at the last prompt token and are masked out).
    """
    length = max(len(r.prompt_ids) + len(r.response_ids) for r in batch)
    width = max(len(r.response_ids) for r in batch)
    ids = torch.full((len(batch), length), pad, dtype=torch.long)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width))
    targets = torch.full((len(batch), width), pad, dtype=torch.long)
    for i, r in enumerate(batch):
        sequence = r.prompt_ids + r.response_ids
        ids[i, : len(sequence)] = torch.tensor(sequence)
        attention[i, : len(sequence)] = 1
        start = len(r.prompt_ids) - 1
        positions[i] = start
        positions[i, : len(r.response_ids)] = torch.arange(start, start + len(r.response_ids))
        mask[i, : len(r.response_ids)] = 1
        targets[i, : len(r.response_ids)] = torch.tensor(r.response_ids)
    return ids, attention, positions, mask, targets


def _sampler_gap(batch: Sequence[Rollout], logprobs: Tensor) -> float | None:
    """The largest |sampler's log-probability - the update's own| over the batch's tokens; None if none were given."""
    gaps = [
        float((logprobs[i, : len(r.logprobs)].cpu() - torch.tensor(r.logprobs)).abs().max())
        for i, r in enumerate(batch)
        if r.logprobs
    ]
    return max(gaps, default=None)


def _by_turn_and_agent(rollouts: Sequence[Rollout]) -> dict[str, dict[str, float]]:
    """Mean reward by ``turn/agent`` and accuracy by turn, over every answer of the batch."""
    rewards: dict[str, list[float]] = defaultdict(list)
    correct: dict[str, list[float]] = defaultdict(list)
    for r in rollouts:
        rewards[f"{r.turn}/{r.agent}"].append(r.reward)
        correct[str(r.turn)].append(float(bool(r.correct)))
    return {
        "reward_by_turn_agent": {key: sum(v) / len(v) for key, v in sorted(rewards.items())},
        "accuracy_by_turn": {key: sum(v) / len(v) for key, v in sorted(correct.items())},
    }


def _jsonable(value: Any) -> Any:
    """``random.getstate()`` as JSON (tuples become lists)."""
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


def _tupled(value: Any) -> Any:
    """The inverse of ``_jsonable`` for ``random.setstate``."""
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value
