"""Token-rate limits per deployment, the way Azure applies them to a Standard deployment.

A deployment of capacity C allows C × 1,000 tokens per minute and 6 × C requests per minute. Each request is
checked when it arrives, on an estimate (its prompt tokens plus `max_tokens`), then charged what it really used
once it is done. So that a flood costs nothing, a request is first admitted on a bound known before any work
(`max_tokens` alone) and grown to the full estimate once its prompt is rendered (`resize`); a request refused or
failing on the way is let go, uncharged (`release`). Tokens count over a sliding minute; requests over sliding
10-second windows (C per window), so a burst is refused without waiting for the minute to turn. Over the limit:
429 with how long to wait.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from ..errors import InvalidRequest, TunelabError

TOKEN_WINDOW = 60.0
REQUEST_WINDOW = 10.0


class RateLimited(TunelabError):
    code = "rate_limit_exceeded"
    type = "requests"
    status = 429

    def __init__(self, message: str, retry_after: float, headers: dict):
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = headers


@dataclass(eq=False)  # each admitted request is its own charge, whatever its figures
class Charge:
    """One admitted request's place in the token window; `settle` replaces the estimate by what was used."""

    at: float
    tokens: int


def duration(seconds: float) -> str:
    """The header form of a wait: `20ms`, `1s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    seconds = math.ceil(seconds)
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


class RateLimiter:
    def __init__(self, capacity: int, clock=time.monotonic):
        self.tokens_per_minute = capacity * 1000
        self.requests_per_minute = capacity * 6
        self.requests_per_window = max(1, round(self.requests_per_minute * REQUEST_WINDOW / 60))
        self.clock = clock
        self._charges: deque[Charge] = deque()
        self._requests: deque[float] = deque()  # arrival times over the last minute
        self._lock = threading.Lock()

    def admit(self, estimate: int, *, what: str = "the deployment") -> tuple[Charge, dict]:
        """Admit a request estimated at `estimate` tokens, or raise RateLimited (429) / InvalidRequest (400)."""
        self._never_fits(estimate, what)
        with self._lock:
            now = self.clock()
            self._prune(now)
            used = sum(c.tokens for c in self._charges)
            recent = [t for t in self._requests if t > now - REQUEST_WINDOW]
            waits = []
            if len(recent) >= self.requests_per_window:
                waits.append(("requests", recent[-self.requests_per_window] + REQUEST_WINDOW - now))
            if len(self._requests) >= self.requests_per_minute:
                waits.append(("requests", self._requests[0] + TOKEN_WINDOW - now))
            if used + estimate > self.tokens_per_minute:
                waits.append(("tokens", self._token_wait(list(self._charges), used, estimate, now)))
            if waits:
                raise self._refusal(*max(waits, key=lambda w: w[1]), now, used, what)
            charge = Charge(now, estimate)
            self._charges.append(charge)
            self._requests.append(now)
            return charge, self._headers(now, used + estimate)

    def resize(self, charge: Charge, estimate: int, *, what: str = "the deployment") -> dict:
        """Replace an admitted request's first bound by its full estimate. Where that does not fit, the request
        is let go (nothing charged, not counted) and RateLimited (429) or InvalidRequest (400) raised."""
        try:
            self._never_fits(estimate, what)
        except InvalidRequest:
            self.release(charge)
            raise
        with self._lock:
            now = self.clock()
            self._prune(now)
            others = [c for c in self._charges if c is not charge]
            used = sum(c.tokens for c in others)
            if used + estimate > self.tokens_per_minute:
                self._forget(charge)
                raise self._refusal("tokens", self._token_wait(others, used, estimate, now), now, used, what)
            charge.tokens = estimate
            return self._headers(now, used + estimate)

    def release(self, charge: Charge) -> None:
        """Let go of an admitted request that was refused or failed before anything was generated."""
        with self._lock:
            self._forget(charge)

    def settle(self, charge: Charge, used: int) -> None:
        """Charge what the request really used instead of its estimate."""
        with self._lock:
            charge.tokens = used

    def _never_fits(self, estimate: int, what: str) -> None:
        if estimate > self.tokens_per_minute:
            raise InvalidRequest(f"this request is estimated at {estimate:,} tokens (prompt + max_tokens), more "
                                 f"than {what}'s limit of {self.tokens_per_minute:,} tokens per minute; lower "
                                 "max_tokens or raise the deployment's capacity", param="max_tokens")

    def _token_wait(self, charges: list[Charge], used: int, estimate: int, now: float) -> float:
        """How long until enough of `charges` (oldest first) expire for `estimate` more tokens to fit."""
        freed, wait = self.tokens_per_minute - used, 0.0
        for charge in charges:
            freed += charge.tokens
            wait = charge.at + TOKEN_WINDOW - now
            if freed >= estimate:
                break
        return wait

    def _refusal(self, kind: str, wait: float, now: float, used: int, what: str) -> RateLimited:
        wait = max(wait, 0.001)
        error = RateLimited(
            f"Rate limit reached for {what} on {kind} per min: limit {self.tokens_per_minute:,} tokens and "
            f"{self.requests_per_minute} requests per minute. Please try again in {duration(wait)}.",
            wait, self._headers(now, used))
        error.type = kind
        return error

    def _forget(self, charge: Charge) -> None:
        if charge in self._charges:
            self._charges.remove(charge)
            if charge.at in self._requests:
                self._requests.remove(charge.at)

    def _prune(self, now: float) -> None:
        while self._charges and self._charges[0].at <= now - TOKEN_WINDOW:
            self._charges.popleft()
        while self._requests and self._requests[0] <= now - TOKEN_WINDOW:
            self._requests.popleft()

    def _headers(self, now: float, used_tokens: int) -> dict:
        reset_tokens = (self._charges[0].at + TOKEN_WINDOW - now) if self._charges else 0.0
        reset_requests = (self._requests[0] + TOKEN_WINDOW - now) if self._requests else 0.0
        return {
            "x-ratelimit-limit-requests": str(self.requests_per_minute),
            "x-ratelimit-limit-tokens": str(self.tokens_per_minute),
            "x-ratelimit-remaining-requests": str(max(0, self.requests_per_minute - len(self._requests))),
            "x-ratelimit-remaining-tokens": str(max(0, self.tokens_per_minute - used_tokens)),
            "x-ratelimit-reset-requests": duration(reset_requests),
            "x-ratelimit-reset-tokens": duration(reset_tokens),
        }
