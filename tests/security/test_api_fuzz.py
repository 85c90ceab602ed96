"""Fuzz of the JSON API from its own OpenAPI schema (schemathesis, on the ASGI app): valid
and invalid bodies, parameters and ids for every operation, as a signed-in user with real
objects of their team. No answer may be a 5xx."""
from __future__ import annotations

import re
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings as hsettings, strategies as st

from web_helpers import seed_team_objects, sign_up

EXAMPLES = 10  # per operation (valid and invalid cases): bounded, about 35 operations


def test_json_api_never_answers_5xx(make_client, local_pg_settings):
    client = make_client(local_pg_settings)
    sign_up(client)
    ids = seed_team_objects(client)
    cookies = dict(client.cookies)
    headers = {"X-CSRF-Token": client.headers["X-CSRF-Token"]}
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    failures, calls, codes = [], 0, {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25

    for operation in operations:
        if operation.path.startswith("/api/auth/") or operation.method.upper() == "DELETE":
            continue  # signing out or deleting would end the fuzz early; both are covered elsewhere
        params = set(re.findall(r"{(\w+)}", operation.path))
        real = st.fixed_dictionaries({p: st.sampled_from([ids[p], str(uuid.uuid4())]) for p in params if p in ids})

        @hsettings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=st.one_of(operation.as_strategy(), operation.as_strategy(schemathesis.GenerationMode.NEGATIVE)),
               path=real)
        def fuzz(case, path):
            nonlocal calls
            if path and case.path_parameters is not None:
                case.path_parameters = {**case.path_parameters, **path}
            response = case.call(headers=headers, cookies=cookies)
            calls += 1
            codes[response.status_code] = codes.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append((operation.method, case.formatted_path, case.body, response.status_code,
                                 response.text[:200]))

        fuzz()
    print(f"\nschemathesis: {calls} calls over {len(operations)} operations; answers {sorted(codes.items())}")
    assert calls >= 100 and codes.get(200, 0) >= 20 and sum(n for c, n in codes.items() if 400 <= c < 500) >= 20
    assert not failures, failures[:5]
    assert client.get("/health").status_code == 200


pytestmark = pytest.mark.filterwarnings("ignore")
