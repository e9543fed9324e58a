"""`/v1/chat/completions`: answers from models and deployments, whole or streamed."""
