"""Trainers that turn a coral dataset into a checkpoint.

- ``trl_trainer``: SFT / DPO (full or LoRA) in this process with TRL; the default, and the one that runs on CPU.
  Its result is a plain Hugging Face checkpoint directory that the embedded engine and vLLM load directly.
- ``fairseq2``: renders fairseq2 recipe configs (Coral's 8B / 70B presets) and launches fairseq2 in its own
  environment (it pins its own torch), locally or on Slurm; never imported into coral's environment.

Nothing is imported here, so ``import finetuning.trainers.fairseq2`` does not pull in torch or TRL.
"""
