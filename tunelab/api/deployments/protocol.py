"""Wire types of `/v1/deployments`, in Azure's shape (`sku`, `properties.model`, `provisioningState`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Sku(BaseModel):
    name: str = "Standard"
    capacity: int = Field(default=5, description="thousands of tokens per minute (6 requests per minute each)")


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, description="a model id: base, ft:…, or ft:…:ckpt-step-N")
    format: str = "OpenAI"
    version: str | None = None


class EngineRef(BaseModel):
    """What decodes a deployment's answers (deploy/engines.py)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["local", "llama.cpp", "vllm", "url"] = Field(
        default="local", description="local: tunelab's engine, in process; llama.cpp, vllm: a server tunelab "
        "starts, watches and stops; url: an engine already running")
    url: str | None = Field(default=None, description="type url only: the engine's address, http(s)://host:port, one the "
                               "operator listed in TUNELAB_ENGINE_URLS")
    kind: Literal["llama.cpp", "vllm"] | None = Field(default=None, description="type url only: what runs there; "
                                                      "left out, the engine is asked")


class DeploymentProperties(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: ModelRef
    raiPolicyName: str | None = Field(default="Default", description="content filter policy: Default or None")
    engine: EngineRef | None = Field(default=None, description="what decodes; default: tunelab's own engine")


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="allow")
    sku: Sku = Sku()
    properties: DeploymentProperties


class Deployment(BaseModel):
    id: str
    name: str
    type: str
    sku: Sku
    properties: dict[str, Any]
    systemData: dict[str, Any]

    @classmethod
    def of(cls, row, engine: dict | None = None) -> "Deployment":
        """A row of the `deployments` table as Azure shows a deployment, with its rate limits and its engine
        (`engine`: the state of the server behind it, if any)."""
        capacity = row["capacity"]
        shown_engine = {"type": row["engine"]}
        if row["engine"] == "url":
            shown_engine.update(url=row["engine_url"], kind=row["engine_kind"])
        shown_engine.update(engine or {})
        return cls(
            id=f"/deployments/{row['name']}", name=row["name"], type="Microsoft.CognitiveServices/accounts/deployments",
            sku=Sku(name=row["sku_name"], capacity=capacity),
            properties={
                "model": {"format": "OpenAI", "name": row["model"], "version": "1"},
                "raiPolicyName": row["rai_policy"] or "None",
                "provisioningState": row["state"], "error": row["error"], "engine": shown_engine,
                "rateLimits": [{"key": "request", "renewalPeriod": 60, "count": capacity * 6},
                               {"key": "token", "renewalPeriod": 60, "count": capacity * 1000}],
            },
            systemData={"createdAt": row["created_at"], "lastModifiedAt": row["updated_at"]})


class DeploymentList(BaseModel):
    value: list[Deployment]
