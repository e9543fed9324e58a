"""`/v1/models`: base models, fine-tuned models and checkpoints."""
