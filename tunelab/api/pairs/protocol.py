"""Wire types of `/v1/pairs`: what to mine pairs from, the pairs with why each was made, and reviewed pairs to save
as a training file."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..files.protocol import FileObject


class PairsCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    evaluations: list[str] = Field(min_length=1, max_length=20, description="completed comparisons over the same "
                                   "prompts (several seeds or candidates pool their answers per prompt)")
    checks: list[str] | None = Field(default=None, description="the yes/no checks that judge an answer (default: "
                                     "every one of the reports with a better direction)")
    max_per_prompt: int | None = Field(default=None, ge=1, le=1000, description="at most this many pairs per "
                                       "prompt (default: one per failing answer)")
    save: bool = Field(default=False, description="also save the pairs as a training file (purpose fine-tune)")
    filename: str | None = Field(default=None, max_length=255, description="the saved file's name (.jsonl)")


class PairsFileCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[Any] = Field(description="preference lines: input, preferred_output, non_preferred_output")
    filename: str | None = Field(default=None, max_length=255, description="the file's name (.jsonl)")


class Side(BaseModel):
    evaluation: str | None
    candidate: str
    seed: int | None
    text: str
    finish_reason: str | None = Field(default=None, description="length: cut off at the comparison's max_tokens")


class Failure(BaseModel):
    check: str
    title: str | None
    value: Any
    reason: str | None


class PreferencePair(BaseModel):
    """One line of the preference file (`row`) and, for a reviewer, where its answers came from and why the
    non-preferred one lost."""

    object: Literal["preference_pair"] = "preference_pair"
    prompt_id: str
    kind: str
    row: dict[str, Any]
    preferred: Side
    non_preferred: Side
    failed: list[Failure]


class PairList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PreferencePair]
    summary: dict[str, Any]
    file: FileObject | None = Field(default=None, description="the saved training file, when `save` was asked")
