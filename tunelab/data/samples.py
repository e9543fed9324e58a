"""Training samples: validated conversations (or preference pairs) rendered to tensors, ready for the recipe's
`loss_step` (or preference.py's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidTrainingFile
from .render import RenderedChat, render_chat
from .validate import MIN_EXAMPLES, Example, validate_file


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
    validation = validate_file(path, min_examples=MIN_EXAMPLES if param == "training_file" else 1, expect="chat")
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


@dataclass
class PairSample:
    """A preference pair as two samples sharing a prompt: the preferred answer (`chosen`) and the non-preferred
    one (`rejected`), each trained on its answer's tokens only. `reference` holds the starting model's summed
    log-probabilities of the two answers, and `beta` the run's β, once the run has set them (train/preference.py)."""

    line: int
    chosen: Sample
    rejected: Sample
    reference: tuple[float, float] | None = None
    beta: float | None = None  # the run's β, set with the reference

    @property
    def length(self) -> int:
        return self.chosen.length + self.rejected.length

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def load_pairs(path: Path, tokenizer, max_len: int, *, param: str = "training_file") -> list[PairSample]:
    """Validate and render a preference-format JSONL file (data/preference.py); any error fails the whole file."""
    from .preference import render_pair

    code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
    validation = validate_file(path, min_examples=1 if param != "training_file" else MIN_EXAMPLES,
                               expect="preference")
    if validation.errors:
        raise _invalid(validation.errors, param, code)
    pairs = []
    for example in validation.examples:
        chosen, rejected = render_pair(tokenizer, example)
        pairs.append(PairSample(example.line, to_sample(example.line, chosen, max_len),
                                to_sample(example.line, rejected, max_len)))
    empty = [p.line for p in pairs if not (p.chosen.n_trained and p.rejected.n_trained)]
    if empty:
        raise InvalidTrainingFile(
            f"{path}: line {empty[0]}: [no_trained_tokens] after truncation to {max_len} tokens an answer of the pair "
            f"has no token left to score ({len(empty)} pair(s)); shorten the prompt", param=param, code=code)
    return pairs
