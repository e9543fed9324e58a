"""Training samples: validated conversations rendered to tensors, ready for the recipe's `loss_step`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidTrainingFile
from .render import RenderedChat, render_chat
from .validate import Example, validate_file


@dataclass
class Sample:
    line: int
    input_ids: torch.Tensor  # (T,) token ids of the whole conversation
    positions: torch.Tensor  # positions t whose next token t+1 is trained
    targets: torch.Tensor  # the trained tokens, input_ids[positions + 1]
    truncated: bool

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def n_trained(self) -> int:
        return int(self.targets.numel())


def to_sample(line: int, chat: RenderedChat, max_len: int) -> Sample:
    truncated = len(chat.input_ids) > max_len
    if truncated:
        chat = chat.truncated(max_len)
    ids = torch.tensor(chat.input_ids, dtype=torch.long)
    mask = torch.tensor(chat.loss_mask, dtype=torch.bool)
    positions = torch.nonzero(mask[1:]).flatten()  # the first token is never predicted
    return Sample(line, ids, positions, ids[positions + 1], truncated)


def render_examples(examples: list[Example], tokenizer) -> list[RenderedChat]:
    return [render_chat(tokenizer, e.messages, e.tools) for e in examples]


def load_samples(path: Path, tokenizer, max_len: int, *, param: str = "training_file") -> list[Sample]:
    """Validate and render a JSONL file; any error fails the whole file, naming its first problems."""
    code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
    # The minimum number of examples is a training-set rule; a small validation set is fine.
    validation = validate_file(path) if param == "training_file" else validate_file(path, min_examples=1)
    if validation.errors:
        raise _invalid(validation.errors, param, code)
    samples = [to_sample(e.line, chat, max_len)
               for e, chat in zip(validation.examples, render_examples(validation.examples, tokenizer))]
    empty = [s.line for s in samples if s.n_trained == 0]
    if empty:
        raise InvalidTrainingFile(
            f"{path}: line {empty[0]}: [no_trained_tokens] after truncation to {max_len} tokens no assistant token "
            f"is left to train on ({len(empty)} example(s))", param=param, code=code)
    return samples


def _invalid(errors, param: str, code: str) -> InvalidTrainingFile:
    if errors[0].rule == "too_few_examples":
        code = "invalid_n_examples"
    more = f" (and {len(errors) - 1} more; run `tunelab data check` for all)" if len(errors) > 1 else ""
    return InvalidTrainingFile(f"{errors[0]}{more}", param=param, code=code)
