"""The status page's login in the pytest process: log in once, keep a signed cookie sent only under
/status, and a forged, expired or outdated cookie is refused.

The page itself in a real browser is tests/e2e/test_status_page.py; the same login over plain HTTP
through a real stack is tests/e2e/test_metrics_e2e.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import urllib.parse
from typing import Any

import tornado.template
import tornado.web
from tornado.httpclient import HTTPResponse

from sbusr.api import app as api_app
from sbusr.api.status import LOGIN_MAX_AGE_DAYS, STATUS_COOKIE, cookie_secret
from tests.helpers.api_app import ApiAppTestCase, FakeBusApi, make_conf

TOKEN = "status-page-token"
DAY = 86400.0
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def nonce_of(response: HTTPResponse) -> str:
    match = re.search(r"script-src 'nonce-([^']+)'", response.headers["Content-Security-Policy"])
    assert match, response.headers["Content-Security-Policy"]
    return match.group(1)


class StatusTestCase(ApiAppTestCase):
    def get(self, path: str, cookie: str | None = None, headers: dict[str, str] | None = None,
            **kwargs: Any) -> HTTPResponse:
        """One request as a browser would send it (the cookie, no redirects followed)."""
        headers = {**(headers or {}), **({"Cookie": cookie} if cookie else {})}
        return self.fetch(path, headers=headers, follow_redirects=False, raise_error=False, **kwargs)

    def page(self, name: str, nonce: str) -> bytes:
        """The template as written with its nonce in place: rendering adds and drops nothing else."""
        text = (api_app.TEMPLATES / name).read_text(encoding="utf-8")
        return text.replace("{{ nonce }}", nonce).replace("{{ error }}", "").encode()


class WithoutTokenTest(StatusTestCase):
    def test_the_page_needs_no_login_and_is_the_template_as_written(self):
        response = self.get("/status")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers["Content-Type"].startswith("text/html"))
        nonce = nonce_of(response)
        self.assertIn(f'<script nonce="{nonce}">'.encode(), response.body)
        self.assertEqual(response.body, self.page("status.html", nonce))
        self.assertEqual((response.headers["Cache-Control"], response.headers["Referrer-Policy"],
                          response.headers["X-Content-Type-Options"]), ("no-store", "no-referrer", "nosniff"))
        self.assertNotEqual(nonce_of(self.get("/status")), nonce)  # a new nonce per response
        data = json.loads(self.get("/status/data").body)
        self.assertEqual((data["api"]["auth"], data["server"]["reachable"]), (False, True))

    def test_a_login_without_a_token_only_redirects(self):
        response = self.get("/status/login", method="POST", body="token=x", headers=FORM)
        self.assertEqual((response.code, response.headers["Location"]), (303, "/status"))
        self.assertNotIn("Set-Cookie", response.headers)


class LoginTest(StatusTestCase):
    api_options = {"auth_token": TOKEN}

    def login(self) -> str:
        """Log in with ``?token=``; the cookie as a browser sends it back."""
        response = self.get(f"/status?token={TOKEN}")
        self.assertEqual((response.code, response.headers["Location"]), (303, "status"))
        (cookie,) = response.headers.get_list("Set-Cookie")
        return cookie.split(";")[0]

    def assert_refused(self, cookie: str | None) -> None:
        self.assertEqual(self.get("/status", cookie).code, 401, cookie)
        self.assertEqual(self.get("/status/data", cookie).code, 401, cookie)
        self.assertEqual(self.get("/status/methods", cookie).code, 401, cookie)

    def assert_accepted(self, cookie: str) -> None:
        self.assertEqual(self.get("/status", cookie).code, 200, cookie)
        self.assertEqual(self.get("/status/data", cookie).code, 200, cookie)
        self.assertEqual(self.get("/status/methods", cookie).code, 200, cookie)

    def test_the_login_form_until_logged_in(self):
        response = self.get("/status")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.body, self.page("login.html", nonce_of(response)))
        self.assertIn(b'name="token"', response.body)
        data = self.get("/status/data")
        self.assertEqual(data.code, 401)
        self.assertIn("log in on /status", json.loads(data.body)["error"]["message"])
        wrong = self.get("/status?token=wrong")
        self.assertEqual(wrong.code, 401)
        self.assertIn(b'id="error">That token is not valid.</div>', wrong.body)
        self.assertNotIn("Set-Cookie", wrong.headers)

    def test_log_in_once_and_keep_a_cookie_sent_only_under_status(self):
        response = self.get(f"/status?token={TOKEN}")
        (cookie,) = response.headers.get_list("Set-Cookie")
        attributes = {part.strip().split("=")[0].lower(): part for part in cookie.split(";")[1:]}
        self.assertEqual(attributes["path"].strip(), "Path=/status")
        self.assertEqual(attributes["samesite"].strip(), "SameSite=Strict")
        self.assertIn("httponly", attributes)
        self.assertNotIn("expires", attributes)  # gone when the browser closes
        self.assertNotIn(TOKEN, cookie)
        jar = cookie.split(";")[0]
        self.assert_accepted(jar)
        data = json.loads(self.get("/status/data", jar).body)
        self.assertIs(data["api"]["auth"], True)
        # the cookie is the page's login, not a bearer token for the API's other routes
        self.assertEqual(self.get("/api/ipsc", jar).code, 401)
        self.assertEqual(self.get("/status/data", headers={"Authorization": f"Bearer {TOKEN}"}).code, 200)

    def test_the_login_form(self):
        response = self.get("/status/login", method="POST", body="token=nope", headers=FORM)
        self.assertEqual(response.code, 401)
        self.assertIn(b"not valid", response.body)
        response = self.get("/status/login", method="POST", body=urllib.parse.urlencode({"token": TOKEN}),
                            headers=FORM)
        self.assertEqual((response.code, response.headers["Location"]), (303, "/status"))
        (cookie,) = response.headers.get_list("Set-Cookie")
        self.assertTrue(cookie.startswith(f"{STATUS_COOKIE}="), cookie)
        self.assert_accepted(cookie.split(";")[0])

    def test_logout_forgets_the_cookie(self):
        response = self.get("/status/logout", self.login())
        self.assertEqual((response.code, response.headers["Location"]), (303, "/status"))
        (cleared,) = response.headers.get_list("Set-Cookie")
        self.assertIn(f'{STATUS_COOKIE}=""', cleared)
        self.assertIn("Path=/status", cleared)

    def test_a_forged_cookie_is_refused(self):
        name, _, value = self.login().partition("=")
        value = value.strip('"')
        signature = value.rsplit("|", 1)[1]
        forged = value[:-len(signature)] + ("0" if signature[0] != "0" else "1") + signature[1:]
        old_style = hmac.new(TOKEN.encode(), b"sbusr status page", hashlib.sha256).hexdigest()
        version_1 = tornado.web.create_signed_value(cookie_secret(TOKEN), STATUS_COOKIE, "yes", version=1)
        for cookie in (None, f'{name}="{forged}"', f"{name}=yes", f"{name}={old_style}", f"{name}=",
                       f"other={value}", f'{name}="{version_1.decode()}"'):
            self.assert_refused(cookie)

    def test_an_expired_cookie_is_refused(self):
        def signed_days_ago(days: float) -> str:
            value = tornado.web.create_signed_value(cookie_secret(TOKEN), STATUS_COOKIE, "yes",
                                                    clock=lambda: time.time() - days * DAY)
            return f'{STATUS_COOKIE}="{value.decode()}"'

        self.assert_accepted(signed_days_ago(LOGIN_MAX_AGE_DAYS - 1))
        self.assert_refused(signed_days_ago(LOGIN_MAX_AGE_DAYS + 1))

    def test_a_new_token_ends_the_logins_made_with_the_old_one(self):
        cookie = self.login()
        self.assert_accepted(cookie)
        self.conf.set_override("auth_token", "n3w-token", "api")  # as a SIGHUP reload does
        self.assert_refused(cookie)
        self.assertEqual(self.get(f"/status?token={TOKEN}").code, 401)
        response = self.get("/status?token=n3w-token")
        self.assert_accepted(response.headers["Set-Cookie"].split(";")[0])


def test_the_templates_escape_what_they_are_given():
    app = api_app.make_app(FakeBusApi(make_conf()))  # type: ignore[arg-type]  # BusApi's surface
    loader = tornado.template.Loader(app.settings["template_path"], autoescape=app.settings["autoescape"],
                                     whitespace=app.settings["template_whitespace"])
    page = loader.load("login.html").generate(nonce='n"><script>', error="<b>&</b>")
    assert b'<style nonce="n&quot;&gt;&lt;script&gt;">' in page
    assert b'id="error">&lt;b&gt;&amp;&lt;/b&gt;</div>' in page
