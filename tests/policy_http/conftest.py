"""Fixtures for the policy-over-HTTP tests: the real PostgreSQL cluster and redis-server fixtures
of tests/platform and tests/policy, reused here (pytest fixtures imported into a conftest)."""

from tests.platform.conftest import pg_base  # noqa: F401
from tests.policy.conftest import redis_url  # noqa: F401
