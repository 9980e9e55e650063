"""sbusr-api's request checks in the pytest process: every malformed request is a 4xx JSON error that
says what is wrong, and none reaches the bus.

The application runs on Tornado's test server over a stand-in for its bus side
(:class:`tests.helpers.api_app.FakeBusApi`): the subject is the HTTP layer. The same requests
through a real process, a real bus and both client backends are in tests/e2e/test_api.py.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from tests.helpers.api_app import API_OPTS, IPSC, ApiAppTestCase

LIMIT = API_OPTS["max_body_size"]
TOKEN = "s3cret-token"

BAD_BODIES: list[tuple[bytes, str]] = [
    (b"", "empty"),
    (b"  \n", "empty"),
    (b"not json", "JSON"),
    (b"[1, 2]", "object"),
    (b'"text"', "object"),
    (b'{"project": "P", "flow": "F", "params": [NaN]}', "JSON"),
    (b'{"project": "P", "flow": "F", "params": [1e999]}', "not a finite number"),
    (b'{"project": "P", "flow": "F", "params": [-1E400]}', "not a finite number"),
    (b'{"project": "P", "flow": "F", "params": [Infinity]}', "JSON"),
    # 7,000 levels (14 KB, within max_body_size): the C scanner's RecursionError must be a 400
    (b'{"project": "P", "flow": "F", "params": ' + b"[" * 7000 + b"]" * 7000 + b"}", "nested more than 32"),
    # 40 levels parse fine but are refused too: nothing that deep reaches the encoder or the IPSC
    (b'{"project": "P", "flow": "F", "params": ' + b"[" * 40 + b"]" * 40 + b"}", "nested more than 32"),
    (b'{"project": "P", "flow": "F", "params": [' + b'{"a":' * 2500 + b"1" + b"}" * 2500 + b"]}", "nested"),
    ('{"project": "\u4e2d", "flow": "F"}'.encode("gbk"), "UTF-8"),
    (b"\xff\xfe{}", "UTF-8"),
]

WRONG_REQUESTS: list[tuple[dict[str, Any], str]] = [
    ({"flow": "F"}, "project"),
    ({"project": "P"}, "flow"),
    ({"project": "", "flow": "F"}, "project"),
    ({"project": 1, "flow": "F"}, "project"),
    ({"project": "P", "flow": ["F"]}, "flow"),
    ({"project": "P", "flow": "F", "server": 16}, "server"),
    ({"project": "P", "flow": "F", "server": "0"}, "server"),
    ({"project": "P", "flow": "F", "server": True}, "server"),
    ({"project": "P", "flow": "F", "process": -1}, "process"),
    ({"project": "P", "flow": "F", "process": 128}, "process"),
    ({"project": "P", "flow": "F", "process": 1.5}, "process"),
    ({"project": "P", "flow": "F", "params": "x"}, "params"),
    ({"project": "P", "flow": "F", "params": {"a": 1}}, "params"),
    ({"project": "P", "flow": "F", "params": ["x" * 9000]}, "params"),
    ({"project": "P", "flow": "F", "wait": "yes"}, "wait"),
    ({"project": "P", "flow": "F", "priority": 1}, "priority"),
    ({"project": "P" * 32, "flow": "F"}, "31"),
    ({"project": "P", "flow": "中" * 16}, "31"),
    ({"project": "P", "flow": "F\u20acx" * 11}, "flow"),
    ({"project": "P\x00", "flow": "F"}, "NUL"),
]

#: every route and method a token protects (all but /health and, by default, /metrics)
PROTECTED = [("POST", "/api/flow"), ("GET", "/api/ipsc"), ("GET", "/api/methods"), ("GET", "/sys/reset"),
             ("POST", "/sys/reset"), ("GET", "/missing")]


class ApiTestCase(ApiAppTestCase):
    def call(self, method: str, path: str, body: bytes | None = None, **kwargs: Any) -> tuple[int, Any]:
        """One request; the status and the JSON body, after checking the error envelope."""
        if body is None and method in ("POST", "PUT"):
            body = b""
        response = self.fetch(path, method=method, body=body, raise_error=False, **kwargs)
        self.assertTrue(response.headers.get("Content-Type", "").startswith("application/json"),
                        f"{method} {path}: not JSON: {response.headers.get('Content-Type')}")
        payload: Any = json.loads(response.body) if response.body else None
        if response.code >= 400:
            self.assertEqual(payload["error"]["code"], response.code, payload)
            self.assertIsInstance(payload["error"]["message"], str, payload)
        return response.code, payload

    def flow(self, body: Any, query: str = "", **kwargs: Any) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.call("POST", "/api/flow" + query, raw, **kwargs)


class FlowRequestTest(ApiTestCase):
    def test_malformed_bodies_are_400_with_the_reason(self):
        with self.assertNoLogs(level="ERROR"):  # no traceback, no RecursionError, from any logger
            for raw, needle in BAD_BODIES:
                code, body = self.flow(raw)
                self.assertEqual(code, 400, (raw[:80], body))
                self.assertIn(needle, body["error"]["message"], raw[:80])
        self.assertEqual(self.bus.flows, [], "an invalid request reached the bus")
        self.assertEqual(self.flow({"project": "P", "flow": "F"})[0], 200)

    def test_wrong_fields_and_types_are_400_naming_the_field(self):
        for request, needle in WRONG_REQUESTS:
            code, body = self.flow(request)
            self.assertEqual(code, 400, (request, body))
            self.assertIn(needle, body["error"]["message"], request)
        self.assertEqual(self.bus.flows, [], "an invalid request reached the bus")

    def test_the_longest_names_and_json_of_any_content_type_are_accepted(self):
        code, body = self.flow({"project": "P" * 31, "flow": "中" * 15, "server": 15, "process": 127},
                               headers={"Content-Type": "text/plain"})
        self.assertEqual(code, 200, body)
        self.assertEqual(body, {"server": IPSC["unit"], "process": IPSC["client"], "invoke_id": 1, "ack": 1,
                                "message": "started"})
        self.assertEqual(self.bus.flows, [{"project": "P" * 31, "flow": "中" * 15, "server": 15,
                                           "process": 127, "params": [], "wait": False}])

    def test_the_wait_flag_in_the_query(self):
        for query, wait in (("?wait=1", True), ("?wait", True), ("?wait=ON", True), ("?wait=false", False),
                            ("?wait=0", False), ("", False)):
            self.assertEqual(self.flow({"project": "P", "flow": "F"}, query)[0], 200, query)
            self.assertIs(self.bus.flows[-1]["wait"], wait, query)
        code, body = self.flow({"project": "P", "flow": "F"}, "?wait=maybe")
        self.assertEqual(code, 400, body)
        self.assertIn("'wait' must be a boolean flag", body["error"]["message"])
        self.assertEqual(len(self.bus.flows), 6)


class BodySizeTest(ApiTestCase):
    def test_a_declared_length_over_the_limit_is_413(self):
        huge = json.dumps({"project": "P", "flow": "F", "params": ["x" * (LIMIT + 1000)]}).encode()
        code, body = self.flow(huge)
        self.assertEqual(code, 413, body)
        self.assertIn(str(LIMIT), body["error"]["message"])
        code, body = self.call("POST", "/sys/reset", b"x" * (LIMIT + 1000))
        self.assertEqual(code, 413, body)
        self.assertEqual((self.bus.flows, self.bus.reloads), ([], 0))
        self.assertEqual(self.flow({"project": "P", "flow": "F"})[0], 200)

    def test_a_chunked_body_over_the_limit_is_refused(self):
        """No Content-Length to refuse early: the body is refused once it outgrows the limit."""
        response = self.fetch("/api/flow", method="POST", body_producer=_chunks(b"y" * (LIMIT + 1000)),
                              raise_error=False)
        self.assertIn(response.code, (400, 413), response)
        self.assertEqual(self.bus.flows, [])
        self.assertEqual(self.flow({"project": "P", "flow": "F"})[0], 200)

    def test_a_body_at_the_limit_is_read(self):
        padding = LIMIT - len(json.dumps({"project": "P", "flow": "F", "params": [""]}))
        body = json.dumps({"project": "P", "flow": "F", "params": [" " * padding]}).encode()
        self.assertEqual(len(body), LIMIT)
        code, answer = self.flow(body)
        # read in full and checked: the params are over the flow frame's size, not the body limit
        self.assertEqual(code, 400, answer)
        self.assertIn("'params' encode to", answer["error"]["message"])


class RouteTest(ApiTestCase):
    def test_unknown_route_is_a_json_404(self):
        code, body = self.call("GET", "/nope")
        self.assertEqual(code, 404, body)
        self.assertIn("/nope", body["error"]["message"])
        self.assertEqual(self.call("POST", "/api/flow/extra", b"{}")[0], 404)

    def test_a_method_the_route_does_not_take_is_a_json_405(self):
        for method, path in (("GET", "/api/flow"), ("DELETE", "/api/ipsc"), ("PUT", "/sys/reset"),
                             ("POST", "/health"), ("POST", "/status/data")):
            code, body = self.call(method, path)
            self.assertEqual(code, 405, (method, path, body))
            self.assertEqual(body["error"]["message"], "Method Not Allowed")

    def test_the_valid_requests_are_answered(self):
        self.assertEqual(self.call("GET", "/api/ipsc"), (200, {"ipsc": [IPSC]}))  # only the IPSC
        self.assertEqual(self.call("GET", "/sys/reset"),
                         (200, {"server": "19:1", "reloaded": {"methods": ["echo"]}}))
        self.assertEqual(self.call("POST", "/sys/reset", b"ignored")[0], 200)
        self.assertEqual(self.bus.reloads, 2)
        code, body = self.call("GET", "/health")
        self.assertEqual((code, body["status"], body["server"]["reachable"]), (200, "ok", True))
        self.assertEqual(self.call("GET", "/api/methods")[1]["methods"], [{"name": "echo"}])


class TokenTest(ApiTestCase):
    api_options = {"auth_token": TOKEN}

    def test_every_route_but_health_and_metrics_needs_the_bearer_token(self):
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}):
            for method, path in PROTECTED:
                body = b'{"project": "P", "flow": "F"}' if method == "POST" else None
                response = self.fetch(path, method=method, body=body, headers=headers, raise_error=False)
                self.assertEqual(response.code, 401, (method, path, headers))
                self.assertIn("Bearer", response.headers.get("WWW-Authenticate", ""))
                self.assertEqual(json.loads(response.body)["error"]["code"], 401)
        self.assertEqual(self.bus.flows, [])
        self.assertEqual(self.call("GET", "/health")[0], 200)
        self.assertEqual(self.fetch("/metrics").code, 200)
        good = {"Authorization": f"Bearer {TOKEN}"}
        self.assertEqual(self.call("GET", "/api/ipsc", headers=good)[0], 200)
        self.assertEqual(self.flow({"project": "P", "flow": "F"}, headers=good)[0], 200)
        self.assertEqual(self.call("GET", "/missing", headers=good)[0], 404)


class MetricsTokenTest(ApiTestCase):
    api_options = {"auth_token": TOKEN, "metrics_need_token": True}

    def test_metrics_need_the_token_when_configured(self):
        self.assertEqual(self.call("GET", "/metrics")[0], 401)
        self.assertEqual(self.fetch("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).code, 200)


def _chunks(data: bytes, size: int = 1000) -> Callable[[Callable[[bytes], Any]], Awaitable[None]]:
    """A body producer: the body in chunks, sent with Transfer-Encoding: chunked (no Content-Length)."""
    async def produce(write: Callable[[bytes], Any]) -> None:
        for start in range(0, len(data), size):
            await write(data[start:start + size])
    return produce
