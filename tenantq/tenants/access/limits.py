"""Cluster-wide rate limits in Redis: tenant submissions and failed authentication per address.

Both use one atomic Lua token bucket, timed by the Redis server's clock (``TIME``), so any number of
API processes on any number of machines share one bucket and their clock skew does not matter.

Redis keys (prefix ``tq:rl:``):
- ``tq:rl:submit:{tenant_id}``  HASH {tokens, ts}: submission bucket, rate = ``submit_rate`` jobs/s,
                                size = ``submit_burst`` (plan + tenant overrides). A batch of N takes N.
- ``tq:rl:auth:{address}``      HASH {tokens, ts}: failed authentications per client address,
                                ``auth_failure_limit`` per ``auth_failure_window_s`` (bucket of that size).
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
    """Blocks a client address after ``auth_failure_limit`` failed authentications within
    ``auth_failure_window_s`` (token bucket: the allowance refills continuously). Only presented but
    wrong credentials count; a request without any credential is not a guess. When Redis is down the
    limiter fails open: credentials are still verified, only the throttling is lost."""

    def __init__(self, client: redis.Redis | None = None) -> None:
        settings = get_settings()
        self.burst = max(1, settings.auth_failure_limit)
        self.rate = self.burst / max(1, settings.auth_failure_window_s)
        self.client = client or get_redis()

    def check(self, address: str) -> None:
        try:
            result = TokenBucket(self.client).take(
                auth_bucket_key(address), rate=self.rate, burst=self.burst, n=0
            )
        except redis.RedisError as exc:
            log.warning("auth failure limiter unavailable: %s", exc)
            return
        if result.remaining < 1:
            wait = BucketResult(
                False, result.remaining, (1 - result.remaining) / self.rate, result.reset_after
            )
            raise TooManyRequests(
                "Too many failed authentication attempts from this address. Retry later.",
                code="too_many_auth_failures",
                details={"limit": self.burst, "window_s": get_settings().auth_failure_window_s},
                headers=rate_limit_headers(wait, self.burst, self.rate),
            )

    def record_failure(self, address: str) -> None:
        try:
            TokenBucket(self.client).take(auth_bucket_key(address), rate=self.rate, burst=self.burst, n=1)
        except redis.RedisError as exc:
            log.warning("auth failure limiter unavailable: %s", exc)
