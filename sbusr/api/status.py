"""The status page (``/status``), its login and the routes it reads, in HTML and JSON.

With ``[api] auth_token`` set, a browser logs in once (``?token=`` or the form) and keeps a Tornado
signed cookie, HttpOnly, SameSite=Strict and sent only under ``/status``: the token never sits in
a link, a bookmark or the browser history, and the cookie is not the token. Its signing key is
derived from the token in force, so changing the token (SIGHUP) or a forged or expired cookie
means logging in again; sbusr-api keeps no session state. The pages are templates in
``sbusr/api/templates`` (autoescaped), served under a Content-Security-Policy that runs only their
own inline code.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import urllib.parse
from typing import Any

import tornado.web

import sbusr
from sbusr.api.bus import ipsc_peers
from sbusr.api.errors import ApiError, asking_server
from sbusr.api.handlers import BaseHandler, BodyHandler
from sbusr.transport.senders import RemoteError

#: the status page's login cookie (a signed "logged in", never the token)
STATUS_COOKIE = "sbusr_status"
#: a login cookie older than this is refused (the browser drops it when it closes anyway)
LOGIN_MAX_AGE_DAYS = 30
_LOGGED_IN = "yes"


def cookie_secret(token: str) -> str:
    """The key that signs login cookies: derived from the token, so a new token ends every login."""
    return hmac.new(token.encode(), b"sbusr status page cookie", hashlib.sha256).hexdigest()


class StatusHandler(BaseHandler):
    """Base of the status routes: they accept the bearer header like every route, or the login's cookie."""

    requires_auth = False  # the bearer header or the cookie, see :meth:`authorised`
    #: the 401 message of a JSON route that needs a login (None: the route checks for itself)
    login_required: str | None = None

    def prepare(self) -> None:
        super().prepare()
        # the token can change on SIGHUP; from then on the cookies signed for the old one are refused
        self.application.settings["cookie_secret"] = cookie_secret(self.api.conf.api.auth_token)
        if self.login_required is not None and not self.authorised():
            raise ApiError(401, self.login_required)

    def authorised(self) -> bool:
        if self.bearer_ok():
            return True
        cookie = self.get_signed_cookie(STATUS_COOKIE, max_age_days=LOGIN_MAX_AGE_DAYS, min_version=2)
        return cookie == _LOGGED_IN.encode()

    def token_matches(self, supplied: str) -> bool:
        return hmac.compare_digest(supplied.encode(), self.api.conf.api.auth_token.encode())

    def remember_login(self) -> None:
        self.set_signed_cookie(STATUS_COOKIE, _LOGGED_IN, expires_days=None, path="/status",
                               httponly=True, samesite="Strict")

    def html(self, template: str, status: int = 200, error: str = "") -> None:
        """Render one of the page templates under a policy that runs only its own inline code."""
        nonce = secrets.token_urlsafe(16)
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Content-Security-Policy", f"default-src 'none'; script-src 'nonce-{nonce}'; "
                        f"style-src 'nonce-{nonce}'; connect-src 'self'; img-src 'self'; form-action 'self'; "
                        "frame-ancestors 'none'; base-uri 'none'")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.render(template, nonce=nonce, error=error)


class StatusPageHandler(StatusHandler):
    """GET /status: the page (or the login form); ``?token=`` logs in once and is dropped from the URL."""

    def get(self) -> None:
        supplied = self.get_query_argument("token", None)
        if supplied is not None and self.api.conf.api.auth_token:
            if not self.token_matches(supplied):
                self.html("login.html", 401, "That token is not valid.")
                return
            self.remember_login()
            self.redirect("status", status=303)  # the same page without the token in its address
            return
        if not self.authorised():
            self.html("login.html", 401)
            return
        self.html("status.html")


@tornado.web.stream_request_body
class StatusLoginHandler(StatusHandler, BodyHandler):
    """POST /status/login: the login form's token, checked and kept in a cookie."""

    def post(self) -> None:
        form = urllib.parse.parse_qs(self.body().decode("utf-8", errors="replace"))
        supplied = (form.get("token") or [""])[0]
        if not self.api.conf.api.auth_token:
            self.redirect("/status", status=303)
            return
        if not self.token_matches(supplied):
            self.html("login.html", 401, "That token is not valid.")
            return
        self.remember_login()
        self.redirect("/status", status=303)


class StatusLogoutHandler(StatusHandler):
    """GET /status/logout: forget the cookie."""

    def get(self) -> None:
        self.clear_cookie(STATUS_COOKIE, path="/status")
        self.redirect("/status", status=303)


class StatusDataHandler(StatusHandler):
    """GET /status/data: what the page shows, as JSON: the bus link, the IPSCs, sbusr-server's sys.stats."""

    login_required = "log in on /status first (or send Authorization: Bearer <token>)"

    async def get(self) -> None:
        bus, peers, stats = await asyncio.gather(self.api.status(), self.api.peers(), self.api.server_stats(),
                                                 return_exceptions=True)
        if isinstance(bus, BaseException):
            bus = {"connected": False, "error": str(bus) or type(bus).__name__}
        ipsc = [] if isinstance(peers, BaseException) else ipsc_peers(peers)
        server: dict[str, Any] = {"address": self.api.server, "reachable": False, "stats": None}
        if isinstance(stats, RemoteError):  # it answered, but not with figures (an older server, say)
            server.update(reachable=True, error=f"sys.stats failed: {stats}")
        elif isinstance(stats, BaseException):
            server["error"] = str(stats) or type(stats).__name__
        else:
            server.update(reachable=True, stats=stats)
        self.reply({"time": round(time.time(), 3),
                    "api": {"version": sbusr.__version__, "auth": bool(self.api.conf.api.auth_token)},
                    "bus": bus, "ipsc": ipsc, "server": server})


class MethodsHandler(StatusHandler):
    """GET /api/methods (and /status/methods, the status page's link): sbusr-server's OpenRPC document,
    asked for over the bus with ``rpc.discover``; the bearer header or the page's login."""

    login_required = "a valid bearer token is required (Authorization: Bearer <token>)"

    async def get(self) -> None:
        with asking_server(self.api.server, "answered rpc.discover with an error"):
            document = await self.api.methods()
        self.reply(document)


class StatusMethodsHandler(MethodsHandler):
    """GET /status/methods: the same document, where the status page's login cookie is sent."""
