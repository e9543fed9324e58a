"""Ask the lab's questions to the base model and to a travel fine-tune, loading the adapter with plain PEFT.

    .venv/bin/python examples/travel/try_adapter.py runs/travel-20261125-120000 [--question "..."]

This is what `make demo` ends with: proof that the adapter in the run directory is a standard PEFT adapter and
that it changed how the model answers. Both answers use the lab's system message and greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

SYSTEM = ("You are an AI travel assistant that helps people plan their trips. Your objective is to offer support for "
          "travel-related inquiries, such as visa requirements, weather forecasts, local attractions, and cultural "
          "norms. You should not provide any hotel, flight, rental car or restaurant recommendations. Ask engaging "
          "questions to help someone plan their trip and think about what they want to do on their holiday.")
QUESTIONS = ["Where in Rome should I stay?", "What are some local delicacies I should try in Lisbon?"]


def main() -> None:
    import torch
    from peft import PeftModel
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tunelab.models.catalog import resolve_model
    from tunelab.models.load import load_causal_lm

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory written by `tunelab train`")
    parser.add_argument("--question", action="append", help="ask this instead (repeatable)")
    args = parser.parse_args()

    manifest = json.loads((args.run / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(args.run / "adapter")  # carries the chat template training used
    model = PeftModel.from_pretrained(load_causal_lm(resolve_model(manifest["base_model"]).path), args.run / "adapter")
    model.eval()

    def answer(question: str) -> str:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=160, do_sample=False, repetition_penalty=1.1,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        new = out[0, ids.shape[1]:]
        cut = "…" if new[-1] != tokenizer.eos_token_id else ""  # stopped by the token limit, not by the model
        return tokenizer.decode(new, skip_special_tokens=True).strip() + cut

    table = Table("question", f"{manifest['base_model']} (base)", "fine-tuned", show_lines=True)
    for question in args.question or QUESTIONS:
        with model.disable_adapter():
            base = answer(question)
        table.add_row(question, base, answer(question))
    console = Console()
    if not console.is_terminal:  # a log or `make` output: give the side-by-side answers room
        console = Console(width=140)
    console.print(table)


if __name__ == "__main__":
    main()
