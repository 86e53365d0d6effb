"""MAPoRL's learned verifier: a causal LM with a scalar head, trained with BCE on the policy's own answers.

Official code (training.md §1.2): a linear head (hidden → 1, no bias) on the LM's hidden states, trained with
binary cross-entropy against the answer's correctness, LoRA r 16, α 32, lr 2e-4, one epoch, 550 input tokens;
the last token's score is the verifier's score. Its data are (question, answer, correct?) rows sampled from the
policy, balanced per question between correct and wrong answers (``balance_rows``), so the verifier cannot win
by predicting each question's majority label.

``load_scorer`` gives the trained verifier as a plain function (question, answer) -> probability, which the
MAPoRL driver turns into rewards and into the peer scores the debate protocol can show (``coral`` never imports
this module). The ``gold`` verifier needs no model: ``coral.rewards.gold_scores``.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn

from coral.atomic import write_atomic
from coral.backends import models
from coral.records import ConversationRecord

MARKER = "verifier.json"
"""Written last into a trained verifier's folder: its presence means the folder is complete."""
Scorer = Callable[[str, str], float]
"""A verifier as a function: (question, answer) -> probability that the answer is correct."""


@dataclass(frozen=True)
class VerifierRow:
    """One training example: a question, an answer the policy gave, and whether it was graded correct."""

    question: str
    answer: str
    correct: bool


@dataclass(frozen=True)
class VerifierSettings:
    """How the verifier is trained; defaults are the official code's (training.md §1.2).

    Args:
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        learning_rate: AdamW's step size.
        epochs: passes over the rows.
        batch_size: rows per optimizer step.
        max_length: tokens kept per row (the start of a long answer is cut, so its end, the final answer, stays).
        seed: seeds LoRA's initialisation, the head and the row order.
    """

    lora_r: int = 16
    lora_alpha: int = 32
    learning_rate: float = 2e-4
    epochs: int = 1
    batch_size: int = 8
    max_length: int = 550
    seed: int = 0


def verifier_rows(records: Iterable[ConversationRecord]) -> list[VerifierRow]:
    """Every graded debater answer of ``records`` as a row; the question is the record's opening turn."""
    rows = []
    for record in records:
        question = record.turns[0].text
        for turn in record.turns:
            if turn.role == "debater" and turn.carries_answer and turn.correct is not None and turn.error is None:
                rows.append(VerifierRow(question, turn.text, bool(turn.correct)))
    return rows


def balance_rows(rows: Sequence[VerifierRow], seed: int) -> list[VerifierRow]:
    """Per question, as many correct as wrong rows: the larger side is sampled down to the smaller one's size.

    A question whose answers were all right (or all wrong) teaches the verifier nothing about telling them apart
    and gives no rows. The sample is seeded; questions keep their first-seen order and each keeps its correct
    rows before its wrong ones.
    """
    rng = random.Random(seed)
    by_question: dict[str, tuple[list[VerifierRow], list[VerifierRow]]] = defaultdict(lambda: ([], []))
    for row in rows:
        by_question[row.question][0 if row.correct else 1].append(row)
    balanced: list[VerifierRow] = []
    for right, wrong in by_question.values():
        keep = min(len(right), len(wrong))
        balanced += rng.sample(right, keep) + rng.sample(wrong, keep)
    return balanced


def verifier_text(question: str, answer: str) -> str:
    """What the verifier reads: the question and the answer, the same way in training and in scoring."""
    return f"Question: {question}\n\nAnswer: {answer}"


class Verifier(nn.Module):
    """A causal LM (with LoRA) and a linear head: the logit that the answer is correct, read at the last token.

    Args:
        model: the LM (a peft model while training or once its adapter is loaded).
        hidden_size: the LM's hidden size.
    """

    def __init__(self, model: Any, hidden_size: int) -> None:
        super().__init__()
        self.model = model
        self.head = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, ids: Tensor, attention: Tensor) -> Tensor:
        """(batch,) logits at each row's last real token (rows are right-padded)."""
        hidden = self.model(input_ids=ids, attention_mask=attention, output_hidden_states=True).hidden_states[-1]
        last = attention.sum(dim=1) - 1
        return self.head(hidden[torch.arange(ids.shape[0]), last].float()).squeeze(1)


def train_verifier(model_name: str, rows: Sequence[VerifierRow], out: Path, settings: VerifierSettings) -> dict:
    """Train a verifier on ``rows`` into ``out`` (adapter, head, ``verifier.json`` last); returns its summary."""
    if not rows:
        raise ValueError("no verifier rows: the policy's answers gave no question with both right and wrong answers")
    torch.manual_seed(settings.seed)
    base, tokenizer = models.load(model_name)
    lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, target_modules="all-linear")
    verifier = Verifier(get_peft_model(base, lora), base.config.hidden_size)
    trainable = [p for p in verifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
    order = list(rows)
    losses: list[float] = []
    for epoch in range(settings.epochs):
        random.Random(settings.seed + epoch).shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            ids, attention = _encode(tokenizer, batch, settings.max_length)
            labels = torch.tensor([float(row.correct) for row in batch])
            loss = nn.functional.binary_cross_entropy_with_logits(verifier(ids, attention), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    out.mkdir(parents=True, exist_ok=True)
    verifier.model.save_pretrained(str(out / "adapter"))
    torch.save(verifier.head.state_dict(), out / "head.pt")
    summary = {"model": model_name, "rows": len(rows), "losses": losses, "settings": asdict(settings)}
    write_atomic(out / MARKER, json.dumps(summary, indent=2).encode())
    return summary


def verifier_is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a finished ``train_verifier`` result."""
    return (folder / MARKER).is_file() and (folder / "head.pt").is_file() and (folder / "adapter").is_dir()


def load_scorer(folder: Path) -> Scorer:
    """The trained verifier in ``folder`` as a function (question, answer) -> sigmoid of its last-token logit."""
    summary = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    base, tokenizer = models.load(summary["model"])
    verifier = Verifier(PeftModel.from_pretrained(base, str(folder / "adapter")), base.config.hidden_size)
    verifier.head.load_state_dict(torch.load(folder / "head.pt", weights_only=True))
    verifier.eval()
    max_length = int(summary["settings"]["max_length"])

    def score(question: str, answer: str) -> float:
        ids, attention = _encode(tokenizer, [VerifierRow(question, answer, False)], max_length)
        with torch.no_grad():
            return float(torch.sigmoid(verifier(ids, attention))[0])

    return score


def _encode(tokenizer: Any, rows: Sequence[VerifierRow], max_length: int) -> tuple[Tensor, Tensor]:
    """Right-padded token ids and attention mask; a long row keeps its last ``max_length`` tokens."""
    encoded = [tokenizer(verifier_text(r.question, r.answer))["input_ids"][-max_length:] for r in rows]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
    return ids, attention
