"""Wire types of `/v1/chat/completions`: the request, the whole `chat.completion` and the streamed
`chat.completion.chunk`, with Azure's content filter fields where a deployment filters.

Fields the cloud sends only sometimes (`content_filter_results`, `prompt_filter_results`, a chunk's `usage`) are
`Wire.optional`: they appear when set, even to null, and are left out otherwise.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...store.completions import metadata_problem
from ..protocol import Wire

FINGERPRINT = "fp_tunelab"
FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id, refusal …

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`. With `store: true` the answer is kept with its `metadata` (the stored
    completions API lists, rates and exports it). Fields the cloud accepts that do not apply here (`user`,
    `service_tier`, …) are accepted and ignored, as the SDK may send them."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = False
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v):
        problem = metadata_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 non-empty stop strings")
        return v


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: str | None = None

    @classmethod
    def of(cls, items) -> "ChoiceLogprobs":
        """From the engine's `TokenLogprob`s (token, logprob, top alternatives)."""
        return cls(content=[TokenLogprob(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()),
                                         top_logprobs=[TopLogprob(token=s, logprob=v, bytes=list(s.encode()))
                                                       for s, v in t.top]) for t in items])


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    annotations: list[dict[str, Any]] = []


class ChatChoice(Wire):
    optional = frozenset({"content_filter_results"})
    index: int
    message: ChatChoiceMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReason
    content_filter_results: dict[str, Any] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None
    completion_tokens_details: dict[str, int] | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens, prompt_tokens_details={"cached_tokens": 0},
                   completion_tokens_details={"reasoning_tokens": 0})


class PromptFilterResult(BaseModel):
    prompt_index: int = 0
    content_filter_results: dict[str, Any]


class ChatObject(Wire):
    """What a whole answer and each of its chunks carry: the answer's id and time, the model asked."""

    optional = frozenset({"prompt_filter_results"})
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str = FINGERPRINT
    prompt_filter_results: list[PromptFilterResult] | None = None  # where a deployment filters prompts


class ChatCompletion(ChatObject):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(Wire):
    optional = frozenset({"role", "content"})
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Wire):
    optional = frozenset({"content_filter_results"})
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    content_filter_results: dict[str, Any] | None = None


class ChatCompletionChunk(ChatObject):
    """One server-sent event of a streamed answer. `usage` is null on every chunk but the last when the client
    asked for it (`stream_options.include_usage`), and absent otherwise."""

    optional = frozenset({"usage", "prompt_filter_results"})
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None
