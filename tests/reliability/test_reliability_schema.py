"""Item 5 (schema): schemathesis against the app's own OpenAPI schema, with the admin key.

Every operation in /openapi.json (admin API, ops, every dialect route's path and query
parameters, the console) gets bounded, generated examples (WHARF_SCHEMA_EXAMPLES, 15 by
default; deadline off); no answer may be a 5xx. A dedicated server takes the damage.
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import (  # noqa: E402
    HealthCheck,
    given,  # noqa: E402
    settings,
)

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("WHARF_SCHEMA_EXAMPLES", 15))


def test_no_server_errors(server_factory):
    server = server_factory()
    auth = {"Authorization": f"Bearer {server.admin_key}"}
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    schema.config.update(base_url=server.url)
    failures, operations = [], 0
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def run(case):
            response = case.call(headers=dict(auth), timeout=60)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, case.path_parameters, case.query,
                                 response.status_code, response.text[:200]))

        run()
    print(f"schemathesis: {operations} operations x <= {EXAMPLES} examples, {len(failures)} server errors")
    assert operations >= 20
    assert not failures, "\n".join(map(repr, failures))
