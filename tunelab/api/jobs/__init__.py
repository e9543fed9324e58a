"""`/v1/fine_tuning`: fine-tuning jobs, their events and checkpoints, and the defaults a job gets."""
