"""The content filters service: custom policies beside the built-in `Default` and `None`, and deletion unless a
deployment still uses the policy."""

from __future__ import annotations

from dataclasses import dataclass

from ...deploy.deployments import Deployments
from ...errors import InvalidRequest
from ...safety.policy import Policies
from ...store.db import Database
from .protocol import NO_POLICY, PolicyBody, PolicyList, PolicyObject


@dataclass
class ContentFiltersService:
    db: Database
    policies: Policies
    deployments: Deployments

    def put(self, name: str, body: PolicyBody) -> PolicyObject:
        return PolicyObject(**self.policies.put(name, body.prompt.model_dump(), body.completion.model_dump(),
                                                body.blocklist))

    def list(self) -> PolicyList:
        return PolicyList(value=[PolicyObject(**p) for p in self.policies.list()])

    def get(self, name: str) -> PolicyObject:
        policy = self.policies.get(name)
        return PolicyObject(**policy.as_dict()) if policy else NO_POLICY

    def delete(self, name: str) -> None:
        with self.db.write() as conn:  # a refusal below rolls the deletion back
            self.policies.delete(conn, name)
            users = self.deployments.names_filtered_by(conn, name)
            if users:
                raise InvalidRequest(f"the policy {name!r} is used by deployment {users[0]!r}", param="name")
