"""`/v1/evals`: the cloud's evals API — evals, their runs and output items, graded by string checks, text
similarity, a local model or tunelab's own checks."""
