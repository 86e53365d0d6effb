"""Fine-tuning on synthetic conversations (iterative training, data creation, trainers)."""
