"""Wire types of `/v1/deployments`, in Azure's shape (`sku`, `properties.model`, `provisioningState`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Sku(BaseModel):
    name: str = "Standard"
    capacity: int = Field(default=5, description="thousands of tokens per minute (6 requests per minute each)")


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, description="a model id: base, ft:…, or ft:…:ckpt-step-N")
    format: str = "OpenAI"
    version: str | None = None


class DeploymentProperties(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: ModelRef
    raiPolicyName: str | None = Field(default="Default", description="content filter policy: Default or None")


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
    def of(cls, row) -> "Deployment":
        """A row of the `deployments` table as Azure shows a deployment, with its rate limits."""
        capacity = row["capacity"]
        return cls(
            id=f"/deployments/{row['name']}", name=row["name"], type="Microsoft.CognitiveServices/accounts/deployments",
            sku=Sku(name=row["sku_name"], capacity=capacity),
            properties={
                "model": {"format": "OpenAI", "name": row["model"], "version": "1"},
                "raiPolicyName": row["rai_policy"] or "None",
                "provisioningState": row["state"], "error": row["error"],
                "rateLimits": [{"key": "request", "renewalPeriod": 60, "count": capacity * 6},
                               {"key": "token", "renewalPeriod": 60, "count": capacity * 1000}],
            },
            systemData={"createdAt": row["created_at"], "lastModifiedAt": row["updated_at"]})


class DeploymentList(BaseModel):
    value: list[Deployment]
