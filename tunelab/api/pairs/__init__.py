"""`/v1/pairs`: preference pairs mined from comparisons, and preference files saved from reviewed pairs (tunelab's
own route)."""
