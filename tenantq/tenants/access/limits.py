"""Cluster-wide rate limits in Redis: tenant submissions and failed authentication.

Both use one atomic Lua token bucket, timed by the Redis server's clock (``TIME``), so any number of
API processes on any number of machines share one bucket and their clock skew does not matter.

Redis keys (prefix ``tq:rl:``):
- ``tq:rl:submit:{tenant_id}``  HASH {tokens, ts}: submission bucket, rate = ``submit_rate`` jobs/s,
                                size = ``submit_burst`` (plan + tenant overrides). A batch of N takes N.
- ``tq:rl:auth:{address}|{credential}``  HASH {tokens, ts}: failed authentications per client address
                                and credential (``key:<kid>``, ``operator``, ...), ``auth_failure_limit``
                                per ``auth_failure_window_s`` (bucket of that size). Refuses that
                                credential from that address before it is checked.
- ``tq:rl:auth:{address}``      HASH {tokens, ts}: the same allowance for all of an address's failures;
                                once spent, a further failure answers 429 instead of 401, but a
                                credential that verifies still gets in.
Each key expires once its bucket would be full again, so idle tenants and addresses cost nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis
from sqlalchemy.orm import Session

from tenantq.core.errors import InvalidInput, ServiceUnavailable, TooManyRequests
from tenantq.core.keys import auth_bucket_key, submit_bucket_key
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings
from tenantq.tenants.accounts.models import Tenant
from tenantq.tenants.accounts.service import effective_limits

log = logging.getLogger("tenantq.limits")

# KEYS[1] bucket; ARGV rate (tokens/s), burst (bucket size), n (tokens wanted; 0 = look only).
# Returns {allowed (0/1), tokens left, seconds until n tokens are there, seconds until full}; floats
# are returned as strings because Redis truncates Lua numbers to integers.
_TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
if tokens > burst then tokens = burst end
local allowed = 0
local wait = 0
if n <= tokens then
  tokens = tokens - n
  allowed = 1
else
  wait = (n - tokens) / rate
end
if n > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
end
return {allowed, tostring(tokens), tostring(wait), tostring((burst - tokens) / rate)}
"""


@dataclass(frozen=True)
class BucketResult:
    allowed: bool
    remaining: float
    retry_after: float  # seconds until the request would fit
    reset_after: float  # seconds until the bucket is full again


class TokenBucket:
    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_TOKEN_BUCKET)

    def take(self, key: str, *, rate: float, burst: int, n: int = 1) -> BucketResult:
        allowed, remaining, wait, reset = self._script(
            keys=[key], args=[repr(float(rate)), int(burst), int(n)]
        )
        return BucketResult(bool(int(allowed)), float(remaining), float(wait), float(reset))


def rate_limit_headers(result: BucketResult, burst: int, rate: float) -> dict[str, str]:
    """``Retry-After`` plus the IETF draft ``RateLimit-*`` fields (Limit = bucket size, Remaining =
    whole tokens left, Reset = seconds until the bucket is full)."""
    return {
        "Retry-After": str(max(1, math.ceil(result.retry_after))),
        "RateLimit-Limit": str(burst),
        "RateLimit-Remaining": str(max(0, math.floor(result.remaining))),
        "RateLimit-Reset": str(max(1, math.ceil(result.reset_after))),
        "RateLimit-Policy": f"{burst};w={max(1, math.ceil(burst / rate))}",
    }


# ------------------------------------------------------------------------------------ submissions
def submission_rate_limit(session: Session, tenant: Tenant, count: int) -> None:
    """Admission check: take ``count`` tokens from the tenant's submission bucket or refuse with 429."""
    limits = effective_limits(session, tenant)
    rate, burst = float(limits.submit_rate), int(limits.submit_burst)
    if count > burst:
        # Would never fit, so "retry later" would be a lie.
        raise InvalidInput(
            f"A batch of {count} jobs exceeds the submission burst of {burst}; split it.",
            code="batch_exceeds_burst",
            details={"count": count, "burst": burst},
        )
    try:
        result = TokenBucket(get_redis()).take(submit_bucket_key(tenant.id), rate=rate, burst=burst, n=count)
    except redis.RedisError as exc:
        raise ServiceUnavailable(
            "The rate limiter is unavailable; the job was not accepted. Retry later.",
            code="queue_unavailable",
            headers={"Retry-After": "1"},
        ) from exc
    if not result.allowed:
        headers = rate_limit_headers(result, burst, rate)
        raise TooManyRequests(
            f"Submission rate limit exceeded ({rate:g} jobs/s, burst {burst}). Retry after "
            f"{headers['Retry-After']} s.",
            code="rate_limited",
            details={
                "limit": "submit_rate",
                "rate": rate,
                "burst": burst,
                "requested": count,
                "retry_after": round(result.retry_after, 3),
            },
            headers=headers,
        )


# ------------------------------------------------------------------------ failed authentication
class AuthFailureLimiter:
    """Throttles guessing without letting guessers lock anybody else out.

    Guessing only pays against a real credential: an API key's secret has ~190 bits, so a made-up key
    id is never going to match. So the allowance that refuses *before* a credential is looked at is per
    client address **and** credential (the key id, ``operator`` for the admin token): after
    ``auth_failure_limit`` wrong secrets for one key id from one address, that key id is refused (429)
    from that address for a while, and nothing else is. The address-wide allowance only turns further
    *failed* checks into 429 (so a scanner is told to stop); a credential that verifies is never
    refused because of other credentials' failures. Only presented but wrong credentials count; a
    request without any credential is not a guess. When Redis is down the limiter fails open:
    credentials are still verified, only the throttling is lost."""

    def __init__(self, client: redis.Redis | None = None) -> None:
        settings = get_settings()
        self.burst = max(1, settings.auth_failure_limit)
        self.rate = self.burst / max(1, settings.auth_failure_window_s)
        self.client = client or get_redis()

    @staticmethod
    def credential_key(address: str, credential: str) -> str:
        return auth_bucket_key(f"{address}|{credential}")

    def _take(self, key: str, n: int) -> BucketResult | None:
        try:
            return TokenBucket(self.client).take(key, rate=self.rate, burst=self.burst, n=n)
        except redis.RedisError as exc:
            log.warning("auth failure limiter unavailable: %s", exc)
            return None

    def _refuse(self, result: BucketResult, what: str) -> TooManyRequests:
        wait = BucketResult(False, result.remaining, (1 - result.remaining) / self.rate, result.reset_after)
        return TooManyRequests(
            f"Too many failed authentication attempts {what}. Retry later.",
            code="too_many_auth_failures",
            details={"limit": self.burst, "window_s": get_settings().auth_failure_window_s},
            headers=rate_limit_headers(wait, self.burst, self.rate),
        )

    def check(self, address: str, credential: str) -> None:
        """Refuse (429) ``credential`` from ``address`` once its allowance is spent."""
        result = self._take(self.credential_key(address, credential), 0)
        if result is not None and result.remaining < 1:
            raise self._refuse(result, "with this credential from this address")

    def record_failure(self, address: str, credential: str) -> TooManyRequests | None:
        """Count a wrong ``credential`` from ``address``; returns the 429 to answer instead of the 401
        when the address has spent its allowance."""
        self._take(self.credential_key(address, credential), 1)
        result = self._take(auth_bucket_key(address), 1)
        if result is not None and not result.allowed:
            return self._refuse(result, "from this address")
        return None
