"""One data module for every coral task: the task is named in the config, its loader reads the file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from coral.errors import DataError
from coral.tasks import Example, Task, get_task


@dataclass
class ValSetArgs:
    """The evaluation set and the agents' instructions (names kept from the reference's CLI).

    Args:
        file_path: the dataset file (or folder) in the task's original format.
        teacher_instruction: instruction style of the agent that answers first.
        student_instruction: instruction style of the agent that asks (turn 0).
    """

    file_path: str
    teacher_instruction: str = "assistant_sbs_short"
    student_instruction: str = "assistant_sbs_short"


class CoralDataModule(LightningDataModule):
    """Loads a task's examples for validation; the whole set is one batch, run concurrently by the model.

    Args:
        task: registered task name (``math``, ``mmlu_pro``, ...).
        val_set_init_args: the file and instructions.
        val_max_instances: keep only the first N examples (None: all).
        task_args: keyword arguments of the task's constructor (e.g. ``compat: true``).
    """

    def __init__(
        self,
        task: str,
        val_set_init_args: ValSetArgs,
        val_max_instances: int | None = None,
        task_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.task_name = task
        self.val_set = val_set_init_args
        self.val_max_instances = val_max_instances
        self.task_args = dict(task_args or {})
        self._task: Task | None = None
        self.examples: list[Example] = []

    @property
    def task(self) -> Task:
        if self._task is None:
            task = get_task(self.task_name, **self.task_args)
            task.instruction(self.val_set.teacher_instruction)  # an unknown style fails before any work
            task.instruction(self.val_set.student_instruction)
            self._task = task
        return self._task

    def instructions(self) -> dict[str, str]:
        """System prompt per speaker."""
        return {
            "teacher": self.task.instruction(self.val_set.teacher_instruction),
            "student": self.task.instruction(self.val_set.student_instruction),
        }

    def setup(self, stage: str) -> None:
        if stage != "validate":
            raise ValueError(f"coral data modules support 'validate' only, got {stage!r}")
        examples = self.task.read(self.val_set.file_path)  # the whole file: a bad line anywhere stops the run now
        self.examples = examples[: self.val_max_instances]
        if not self.examples:
            raise DataError(self.val_set.file_path, None, None, "no examples to evaluate")

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.examples, batch_size=len(self.examples), shuffle=False, collate_fn=list)
