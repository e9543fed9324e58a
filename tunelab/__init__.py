"""tunelab: fine-tune a chat model on your own examples and compare it with the base model, on your own machine."""

import os

__version__ = "0.1.0"

# tunelab loads models from local files only; without this, libraries probe the hub for files they could use
# (slow where the network is closed, and a surprise where it is open). Set HF_HUB_OFFLINE=0 to allow it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tokenizer threads would fight training for the same cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
