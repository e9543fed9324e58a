"""Content filter policies: per category, the lowest severity that is blocked — separately for prompts and for
completions — plus custom blocklists, as Azure's content filters work.

`Default` blocks medium and high in every category, both ways, as the cloud's default does. `None` filters
nothing. Custom policies are created through `PUT /v1/content_filters/{name}`.

When the classifier cannot judge (its encoder missing or failing), a policy either refuses (`fail_closed`: 503
`content_filter_error`) or answers unfiltered and says so, as Azure does (`annotate`); blocklists still apply.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Literal

from ..errors import InvalidRequest, NotFound, TunelabError
from ..store.db import Database
from .classifier import CATEGORIES, SEVERITIES, Classifier, normalise

LEVELS = ("low", "medium", "high", "off")  # "off": never blocked
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BUILT_IN = ("Default", "None")
NOT_FILTERED = {"code": "content_filter_error", "message": "The contents are not filtered"}  # Azure's words

log = logging.getLogger("tunelab.safety")


class ContentFiltered(TunelabError):
    """A prompt the deployment's policy blocks: 400 `content_filter`, with the per-category findings."""

    code = "content_filter"

    def __init__(self, results: dict):
        super().__init__("The prompt was filtered because it triggered the deployment's content filter policy; "
                         "see innererror.content_filter_result for the categories.", param="prompt")
        self.innererror = {"code": "ResponsibleAIPolicyViolation", "content_filter_result": results}


class FilterUnavailable(TunelabError):
    """The classifier could not judge and the service fails closed: nothing is answered unfiltered."""

    code = "content_filter_error"
    type = "server_error"
    status = 503

    def __init__(self):
        super().__init__("The content filter is unavailable, so nothing was answered; try again shortly.")


@dataclass
class Policy:
    name: str
    prompt: dict[str, str] = field(default_factory=lambda: {c: "medium" for c in CATEGORIES})
    completion: dict[str, str] = field(default_factory=lambda: {c: "medium" for c in CATEGORIES})
    blocklist: list[str] = field(default_factory=list)
    outage: Literal["fail_closed", "annotate"] = "fail_closed"  # what happens when the classifier cannot judge

    def check(self, texts: str | list[str], role: str, classifier: Classifier | None = None) -> tuple[bool, dict]:
        """Judge `texts` (role "prompt" or "completion"), each on its own so that harm in one is not diluted by
        the others: (blocked?, Azure's content_filter_results with the worst finding per category)."""
        texts = [texts] if isinstance(texts, str) else texts
        limits = self.prompt if role == "prompt" else self.completion
        try:
            judge = classifier or Classifier.default()
            found = [judge.classify(text) for text in texts]
        except Exception:
            log.exception("the content filter could not judge a %s", role)
            if self.outage == "fail_closed":
                raise FilterUnavailable() from None
            results = {"error": dict(NOT_FILTERED)}
        else:
            worst = {c: max((f[c] for f in found), key=SEVERITIES.index, default="safe") for c in CATEGORIES}
            results = {c: {"filtered": limits[c] != "off"
                           and SEVERITIES.index(worst[c]) >= SEVERITIES.index(limits[c]),
                           "severity": worst[c]} for c in CATEGORIES}
        if self.blocklist:
            flat = [normalise(text).lower() for text in texts]
            hit = [t for t in self.blocklist if any(t.lower() in f for f in flat)]
            results["custom_blocklists"] = {"filtered": bool(hit),
                                            "details": [{"id": self.name, "filtered": bool(hit)}]}
        return any(r.get("filtered") for r in results.values()), results

    def as_dict(self) -> dict:
        return {"name": self.name, "prompt": self.prompt, "completion": self.completion, "blocklist": self.blocklist}


class Policies:
    """Built-in and custom policies (the `content_filters` table)."""

    def __init__(self, db: Database, outage: str = "fail_closed"):
        self.db = db
        self.outage = outage

    def get(self, name: str | None) -> Policy | None:
        """The policy called `name`; None for no filtering."""
        if name in (None, "None"):
            return None
        if name == "Default":
            return Policy("Default", outage=self.outage)
        rows = self.db.query("SELECT config FROM content_filters WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no content filter policy named {name!r}", param="raiPolicyName")
        config = json.loads(rows[0]["config"])
        return Policy(name, config["prompt"], config["completion"], config["blocklist"], outage=self.outage)

    def put(self, name: str, prompt: dict, completion: dict, blocklist: list[str]) -> dict:
        if not NAME.match(name) or name in BUILT_IN:
            raise InvalidRequest(f"a policy name is 1–64 letters, digits, '.', '_', '-', not {', '.join(BUILT_IN)}; "
                                 f"got {name!r}", param="name")
        levels = {}
        for role, given in (("prompt", prompt), ("completion", completion)):
            unknown = set(given) - set(CATEGORIES)
            if unknown:
                raise InvalidRequest(f"unknown category {sorted(unknown)[0]!r}; use {', '.join(CATEGORIES)}", param=role)
            for category, level in given.items():
                if level not in LEVELS:
                    raise InvalidRequest(f"{role}.{category} must be one of {', '.join(LEVELS)}",
                                         param=f"{role}.{category}")
            levels[role] = {c: given.get(c, "medium") for c in CATEGORIES}
        terms = [t.strip() for t in blocklist if t.strip()]
        policy = Policy(name, levels["prompt"], levels["completion"], terms)
        with self.db.write() as conn:
            conn.execute("INSERT INTO content_filters (name, config, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                         "DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
                         (name, json.dumps(policy.as_dict()), int(time.time())))
        return policy.as_dict()

    def list(self) -> list[dict]:
        custom = [self.get(r["name"]).as_dict() for r in self.db.query("SELECT name FROM content_filters ORDER BY name")]
        return [Policy("Default").as_dict(), *custom]

    def delete(self, conn, name: str) -> None:
        """Inside the caller's write transaction; whether a deployment still uses the policy is the caller's rule."""
        if name in BUILT_IN:
            raise InvalidRequest(f"{name!r} is built in and cannot be deleted", param="name")
        self.get(name)
        conn.execute("DELETE FROM content_filters WHERE name = ?", (name,))
