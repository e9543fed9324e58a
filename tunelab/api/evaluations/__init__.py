"""`/v1/evaluations`: comparisons of deployments or models on a prompt set (tunelab's own route)."""
