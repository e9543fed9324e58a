"""Wire types of `/v1/content_filters`: a policy's thresholds per category, for prompts and completions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Level = Literal["low", "medium", "high", "off"]


class Thresholds(BaseModel):
    """Per category, the lowest severity that is blocked (`off`: never); unnamed categories block medium."""

    model_config = ConfigDict(extra="forbid")
    hate: Level = "medium"
    sexual: Level = "medium"
    violence: Level = "medium"
    self_harm: Level = "medium"


class PolicyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Thresholds = Thresholds()
    completion: Thresholds = Thresholds()
    blocklist: list[str] = Field(default=[], max_length=1000, description="terms blocked wherever they appear")


class PolicyObject(PolicyBody):
    name: str


class PolicyList(BaseModel):
    value: list[PolicyObject]


OFF = Thresholds(hate="off", sexual="off", violence="off", self_harm="off")
NO_POLICY = PolicyObject(name="None", prompt=OFF, completion=OFF)  # what `None` is: nothing blocked
