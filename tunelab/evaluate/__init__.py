"""Evaluating chat models side by side: answer checks (`checks.py`) that score each answer and aggregate them per
candidate model."""
