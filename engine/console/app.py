"""The operator console: a small Starlette app that is only a client of the gRPC API.

It holds no state of its own: every page is one or a few gRPC calls made with the signed-in user's
own API token (so the engine's role table and audit log apply unchanged), and live alerts are the
user's `SubscribeMatches` stream relayed as server-sent events. The token lives only in an
encrypted (Fernet), HttpOnly, SameSite=Strict cookie; every POST carries a CSRF token bound to that
session; every response is `Cache-Control: no-store` and images are inlined or served only to a
session. HTML is rendered on the server with autoescaping; the one script is a static file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import datetime as dt
import hmac
import io
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jinja2
from cryptography.fernet import Fernet, InvalidToken
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.service.proto import pb, rpc

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "fe_session"
LOGIN_COOKIE = "fe_login_csrf"
MAX_UPLOAD = 20 * 1024 * 1024
MAX_FORM = 1024 * 1024  # a urlencoded form (no files): parsed whole in memory, so kept small
MAX_LOGIN = 64 * 1024  # the sign-in form holds a token and a CSRF value
CSV_MAX_ROWS = 10000
LOOPBACK = ("127.0.0.1", "::1", "localhost")
CSP = ("default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


@dataclass
class ConsoleSettings:
    """What the console needs: where the engine is, how to reach it, and how to seal sessions."""

    server: str
    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    secret: bytes = b""  # Fernet key; empty = a fresh one (sessions end when the console restarts)
    session_hours: float = 12.0
    max_cards: int = 50
    https: bool = False  # cookies get the Secure flag
    login_failures: int = 10  # failed sign-ins from one client address within login_window_s before a pause
    login_window_s: float = 60.0
    login_failures_total: int = 100  # failed sign-ins from all addresses together within the window
    host: str = "127.0.0.1"  # where the console listens (an auth-off engine is refused beyond loopback)
    allow_open_engine: bool = False  # sign-ins to an auth-off (--dev) engine on a non-loopback plain-HTTP console
    max_body_bytes: int = 64 * 1024 * 1024  # largest request body of any kind (uploads included)
    revoked_file: str = ""  # where signed-out sessions are remembered across restarts (empty: memory only)


@dataclass(frozen=True)
class Session:
    token: str
    name: str
    role: str  # operator, admin (or auth-off against a --dev server)
    csrf: str
    sid: str = ""  # the session's id: signing out revokes it (the cookie alone no longer works)

    @property
    def is_admin(self) -> bool:
        return self.role in ("admin", "auth-off")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


class _Stubs:
    """One gRPC channel for all users; each call carries the user's own token."""

    def __init__(self, s: ConsoleSettings) -> None:
        opts = [("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if s.ca_cert:
            creds = grpc.ssl_channel_credentials(
                Path(s.ca_cert).read_bytes(), Path(s.client_key).read_bytes() if s.client_key else None,
                Path(s.client_cert).read_bytes() if s.client_cert else None)
            self.channel = grpc.aio.secure_channel(s.server, creds, options=opts)
        else:
            self.channel = grpc.aio.insecure_channel(s.server, options=opts)
        self.cameras = rpc.CamerasStub(self.channel)
        self.watchlists = rpc.WatchlistsStub(self.channel)
        self.matches = rpc.MatchesStub(self.channel)
        self.admin = rpc.AdminStub(self.channel)


class _Forbidden(Exception):
    """An operator asked for an admin action (the console refuses before calling the engine)."""


class _NoSession(Exception):
    pass


class _BadCSRF(Exception):
    pass


# ---- formatting helpers (also used by templates) -----------------------------------------------
def fmt_time(ts: float) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse_time(text: str) -> float:
    """A `datetime-local` value (taken as UTC) or Unix seconds; '' = no bound."""
    text = text.strip()
    if not text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()
    except ValueError as exc:
        raise ValueError(f"time {text!r}: use YYYY-MM-DDTHH:MM (UTC)") from exc


def csv_cell(value: object) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (=, +, -, @ prefixes)."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# ---- security headers --------------------------------------------------------------------------
class SecurityHeaders:
    """no-store on everything dynamic, a strict CSP, no framing, no sniffing, no referrer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                headers += [(b"cache-control", b"no-cache" if static else b"no-store"),
                            (b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
                            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if not static:
                    headers.append((b"pragma", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def open_engine_allowed(s: ConsoleSettings) -> bool:
    """Whether this console may front an engine running without auth: only on loopback or over HTTPS,
    unless the operator said so explicitly (as the engine itself refuses --dev beyond loopback)."""
    return s.allow_open_engine or s.https or s.host in LOOPBACK


class _Revoked:
    """Session ids signed out before their cookie expires: checked on every request, kept until the
    cookie would have expired anyway, and (with a file) across console restarts."""

    def __init__(self, path: str, ttl_s: int) -> None:
        self.path = Path(path).expanduser() if path else None
        self.ttl_s = ttl_s
        self.until: dict[str, float] = {}
        if self.path is not None and self.path.exists():
            now = time.time()
            for line in self.path.read_text().splitlines():
                sid, _, until = line.partition(" ")
                with contextlib.suppress(ValueError):
                    if float(until) > now:
                        self.until[sid] = float(until)

    def add(self, sid: str) -> None:
        now = time.time()
        self.until = {k: v for k, v in self.until.items() if v > now}
        self.until[sid] = now + self.ttl_s
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(f"{k} {v:.0f}\n" for k, v in self.until.items()))
            tmp.chmod(0o600)
            tmp.replace(self.path)

    def has(self, sid: str) -> bool:
        until = self.until.get(sid)
        return until is not None and until > time.time()


class BodyLimit:
    """Refuse request bodies over a limit (413) before anything parses them: any body over
    `max_bytes`, a urlencoded form over MAX_FORM, the sign-in form over MAX_LOGIN. A declared
    Content-Length is checked at once; a chunked body is counted as it arrives and cut off."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def limit_for(self, scope: Scope) -> int:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        limit = self.max_bytes
        if ctype != b"multipart/form-data":
            limit = min(limit, MAX_FORM)
        if scope["path"] == "/login":
            limit = min(limit, MAX_LOGIN)
        return limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(send, limit)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            if refused:
                await _too_large(send, limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f"request body too large: at most {limit} bytes here\n".encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# ---- the app -----------------------------------------------------------------------------------
def create_app(settings: ConsoleSettings) -> Starlette:
    """Build the console ASGI app (serve it with uvicorn; see `faceengine console`)."""
    fernet = Fernet(settings.secret or Fernet.generate_key())
    ttl = int(settings.session_hours * 3600)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined)
    env.globals.update(fmt_time=fmt_time, b64=b64, max_cards=settings.max_cards)
    state: dict[str, _Stubs] = {}
    failures: dict[str, list[float]] = {}  # client address -> recent failed sign-ins (kept only for the window)
    all_failures: list[float] = []  # every failed sign-in within the window, whatever its address
    revoked = _Revoked(settings.revoked_file, ttl)

    def throttled(ip: str) -> str:
        """Why sign-ins are paused now ('' when they are not). Failed sign-ins are paced here, per browser
        address and for all addresses together (a token carries no account name before it is checked, so
        the bound on guesses from many addresses is a global one): through the console every guess reaches
        the engine from the console's own address, and the engine's per-peer throttle would otherwise lock
        every console user out because of one guesser."""
        now = time.monotonic()
        recent = [t for t in failures.get(ip, []) if now - t < settings.login_window_s]
        if recent:
            failures[ip] = recent
        else:
            failures.pop(ip, None)
        if len(failures) > 10000:  # bounded: forget the oldest addresses
            for key in list(failures)[:5000]:
                failures.pop(key, None)
        all_failures[:] = [t for t in all_failures if now - t < settings.login_window_s]
        if len(recent) >= settings.login_failures:
            return f"too many failed sign-ins from {ip}; wait {settings.login_window_s:g} s"
        if len(all_failures) >= settings.login_failures_total:
            return (f"too many failed sign-ins ({len(all_failures)} within {settings.login_window_s:g} s from "
                    "several addresses); sign-in is paused, try again shortly")
        return ""

    def failed(ip: str) -> None:
        now = time.monotonic()
        failures.setdefault(ip, []).append(now)
        all_failures.append(now)

    def stubs() -> _Stubs:
        if "s" not in state:  # created inside the server's event loop
            state["s"] = _Stubs(settings)
        return state["s"]

    # ---- sessions ------------------------------------------------------------------------------
    def session_of(request: Request) -> Session | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = json.loads(fernet.decrypt(raw.encode(), ttl=ttl))
            sess = Session(data["t"], data["n"], data["r"], data["c"], data.get("s", ""))
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None
        return None if not sess.sid or revoked.has(sess.sid) else sess

    def set_cookie(resp: Response, key: str, value: str, max_age: int | None) -> None:
        resp.set_cookie(key, value, max_age=max_age, httponly=True, samesite="strict", secure=settings.https,
                        path="/")

    def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("session", session_of(request))
        ctx.setdefault("error", "")
        ctx.setdefault("notice", "")
        return HTMLResponse(env.get_template(name).render(request=request, **ctx), status_code=status)

    async def require(request: Request, admin: bool = False) -> tuple[Session, FormData | None]:
        """The signed-in session (and, for POST, the form after its CSRF check)."""
        sess = session_of(request)
        if sess is None:
            raise _NoSession()
        form = None
        if request.method == "POST":
            form = await request.form(max_part_size=MAX_UPLOAD, max_files=8, max_fields=50)
            sent = str(form.get("csrf") or request.headers.get("x-csrf-token") or "")
            if not hmac.compare_digest(sent.encode(), sess.csrf.encode()):
                raise _BadCSRF()
        if admin and not sess.is_admin:
            raise _Forbidden()
        return sess, form

    # ---- sign-in -------------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        csrf = secrets.token_urlsafe(24)
        resp = render(request, "login.html", csrf=csrf, session=None)
        set_cookie(resp, LOGIN_COOKIE, csrf, 600)
        return resp

    async def login(request: Request) -> Response:
        form = await request.form(max_part_size=64 * 1024, max_files=0, max_fields=10)
        csrf = str(form.get("csrf") or "")
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not hmac.compare_digest(csrf.encode(), cookie.encode()):
            return HTMLResponse("sign-in form expired or forged (CSRF check failed); reload the page", 403)
        token = str(form.get("token") or "").strip()

        def again(msg: str, status: int) -> Response:
            new = secrets.token_urlsafe(24)
            resp = render(request, "login.html", status, csrf=new, error=msg, session=None)
            set_cookie(resp, LOGIN_COOKIE, new, 600)
            return resp

        if not token:
            return again("enter an API token", 400)
        ip = request.client.host if request.client else "?"  # the real peer (or a configured proxy's client)
        paused = throttled(ip)
        if paused:
            return again(paused, 429)
        try:  # the engine paces failures per (console, browser address), not per console: see auth.trusted_proxies
            who = await stubs().admin.WhoAmI(pb.Empty(), metadata=(("authorization", f"Bearer {token}"),
                                                                    ("x-forwarded-for", ip)), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                failed(ip)
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                return again("this token may not sign in to the console (gateway tokens are for cameras; "
                             "use an operator or admin token)", 403)
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return again("invalid or revoked API token", 401)
            return again(f"engine unavailable: {exc.code().name}: {exc.details()}", 503)
        if who.role not in ("operator", "admin", "auth-off"):
            return again(f"role {who.role!r} may not sign in to the console", 403)
        if who.role == "auth-off" and not open_engine_allowed(settings):
            log.error("console sign-in refused: the engine runs without auth (--dev) and this console listens on "
                      "%s over plain HTTP", settings.host)
            return again("the engine runs without authentication (--dev): this console listens on "
                         f"{settings.host} over plain HTTP, where anyone could sign in as admin. Listen on "
                         "127.0.0.1, serve HTTPS, enable auth on the engine, or start the console with "
                         "--allow-open-engine", 403)
        sess = {"t": token, "n": who.name, "r": who.role, "c": secrets.token_urlsafe(24),
                "s": secrets.token_urlsafe(16)}
        resp = RedirectResponse("/live", 303)
        set_cookie(resp, SESSION_COOKIE, fernet.encrypt(json.dumps(sess).encode()).decode(), ttl)
        resp.delete_cookie(LOGIN_COOKIE, path="/")
        log.info("console sign-in: %s (%s)", who.name, who.role)
        return resp

    async def logout(request: Request) -> Response:
        sess, _ = await require(request)
        revoked.add(sess.sid)  # a copy of the cookie kept from before no longer works
        log.info("console sign-out: %s (%s)", sess.name, sess.role)
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    async def index(request: Request) -> Response:
        return RedirectResponse("/live" if session_of(request) else "/login", 303)

    # ---- live alerts ---------------------------------------------------------------------------
    async def live(request: Request) -> Response:
        sess, _ = await require(request)
        recent = await stubs().matches.QueryMatches(
            pb.QueryMatchesRequest(page_size=min(settings.max_cards, 20), include_thumbnails=True),
            metadata=sess.metadata, timeout=15)
        return render(request, "live.html", events=list(recent.events))

    async def live_stream(request: Request) -> Response:
        sess, _ = await require(request)
        call = stubs().matches.SubscribeMatches(pb.MatchFilter(), metadata=sess.metadata)
        card = env.get_template("card.html")
        queue: asyncio.Queue[pb.MatchEvent | BaseException | None] = asyncio.Queue(maxsize=settings.max_cards * 4)

        async def pump() -> None:
            try:
                async for ev in call:
                    if queue.full():  # the browser is behind: drop the oldest, as the engine's bus does
                        queue.get_nowait()
                    queue.put_nowait(ev)
                queue.put_nowait(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the generator
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(exc)

        async def events() -> AsyncIterator[str]:
            task = asyncio.create_task(pump())
            try:
                # the engine sends initial metadata once the subscription is on its bus: "connected" (and the
                # page's "live") before that would lose the alerts published in between
                with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                    await asyncio.wait_for(call.initial_metadata(), 5)
                yield "retry: 2000\n: connected\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if item is None:
                        yield "event: end\ndata: the engine closed the stream\n\n"
                        return
                    if isinstance(item, BaseException):
                        code = item.code().name if isinstance(item, grpc.aio.AioRpcError) else type(item).__name__
                        yield f"event: failure\ndata: {code}\n\n"
                        return
                    html = card.render(e=item, session=sess)
                    yield "event: match\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"
            finally:
                call.cancel()
                task.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    async def acknowledge(request: Request) -> Response:
        sess, form = await require(request)
        assert form is not None
        ev = await stubs().matches.AcknowledgeMatch(pb.AcknowledgeRequest(
            event_id=str(form.get("event_id") or ""), action=str(form.get("action") or ""),
            note=str(form.get("note") or "")), metadata=sess.metadata, timeout=15)
        if request.headers.get("x-requested-with") == "console":
            return HTMLResponse(env.get_template("ack.html").render(e=ev, session=sess))
        return RedirectResponse("/live", 303)

    # ---- history -------------------------------------------------------------------------------
    def history_request(q: Any, page_size: int, token: str, thumbs: bool) -> pb.QueryMatchesRequest:
        return pb.QueryMatchesRequest(
            camera_id=q.get("camera", "").strip(), watchlist=q.get("watchlist", "").strip(),
            person_id=q.get("person", "").strip(), since=parse_time(q.get("since", "")),
            until=parse_time(q.get("until", "")), min_score=float(q.get("min_score") or 0),
            page_size=page_size, page_token=token, include_thumbnails=thumbs)

    async def history(request: Request) -> Response:
        sess, _ = await require(request)
        q = request.query_params
        filters = {k: q.get(k, "") for k in ("camera", "watchlist", "person", "since", "until", "min_score")}
        ctx: dict[str, Any] = {"q": q, "filters_qs": _qs(**filters), "next_qs": ""}
        try:
            req = history_request(q, 50, q.get("page", ""), True)
        except ValueError as exc:
            return render(request, "history.html", 400, events=[], next_page="", error=str(exc), **ctx)
        res = await stubs().matches.QueryMatches(req, metadata=sess.metadata, timeout=30)
        ctx["next_qs"] = _qs(**filters, page=res.next_page_token)
        return render(request, "history.html", events=list(res.events), next_page=res.next_page_token, **ctx)

    async def history_csv(request: Request) -> Response:
        sess, _ = await require(request)
        q = request.query_params
        try:
            req = history_request(q, 1000, "", False)
        except ValueError as exc:
            return Response(str(exc), 400, media_type="text/plain")
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["time_utc", "timestamp", "camera", "watchlist", "person_id", "name", "score", "event_id",
                    "ack_action", "ack_by", "ack_time_utc", "ack_note"])
        rows = 0
        while rows < CSV_MAX_ROWS:
            res = await stubs().matches.QueryMatches(req, metadata=sess.metadata, timeout=30)
            for e in res.events:
                w.writerow([csv_cell(v) for v in (fmt_time(e.timestamp), f"{e.timestamp:.3f}", e.camera_id,
                                                  e.watchlist, e.person_id, e.display_name, f"{e.score:.4f}",
                                                  e.event_id, e.ack_action, e.ack_by, fmt_time(e.ack_time),
                                                  e.ack_note)])
            rows += len(res.events)
            if not res.next_page_token:
                break
            req.page_token = res.next_page_token
        return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": 'attachment; filename="matches.csv"'})

    # ---- search by photo -----------------------------------------------------------------------
    async def search(request: Request) -> Response:
        sess, form = await require(request)
        if form is None:
            return render(request, "search.html", result=None, probe="")
        data = await _upload(form, "photo")
        if not data:
            return render(request, "search.html", 400, result=None, probe="", error="choose a photo to search with")
        res = await stubs().matches.SearchByImage(pb.SearchRequest(image=pb.Image(encoded=data),
                                                                   top_k=int(str(form.get("top_k") or 5))),
                                                  metadata=sess.metadata, timeout=60)
        return render(request, "search.html", result=res, probe=b64(data))

    # ---- watchlists and persons ----------------------------------------------------------------
    async def watchlists(request: Request) -> Response:
        sess, _ = await require(request)
        res = await stubs().watchlists.ListWatchlists(pb.Empty(), metadata=sess.metadata, timeout=15)
        return render(request, "watchlists.html", watchlists=list(res.watchlists),
                      notice=request.query_params.get("done", ""))

    async def watchlist_create(request: Request) -> Response:
        sess, form = await require(request, admin=True)
        assert form is not None
        await stubs().watchlists.CreateWatchlist(pb.CreateWatchlistRequest(
            name=str(form.get("name") or "").strip(), description=str(form.get("description") or "")),
            metadata=sess.metadata, timeout=15)
        return RedirectResponse("/watchlists?done=created", 303)

    async def watchlist_delete(request: Request) -> Response:
        sess, form = await require(request, admin=True)
        assert form is not None
        await stubs().watchlists.DeleteWatchlist(pb.WatchlistRequest(name=str(form.get("name") or "")),
                                                 metadata=sess.metadata, timeout=15)
        return RedirectResponse("/watchlists?done=deleted", 303)

    async def persons_page(request: Request, name: str, sess: Session, status: int = 200, **extra: Any) -> Response:
        after = request.query_params.get("after", "")
        wl = await stubs().watchlists.ListPersons(pb.ListPersonsRequest(watchlist=name, page_size=50,
                                                                        page_token=after),
                                                  metadata=sess.metadata, timeout=15)
        extra.setdefault("preview", None)
        extra.setdefault("form", {})
        extra.setdefault("conflict", None)
        return render(request, "persons.html", status, watchlist=name, persons=list(wl.persons),
                      next_page=wl.next_page_token, **extra)

    async def persons(request: Request) -> Response:
        sess, _ = await require(request)
        return await persons_page(request, request.query_params.get("name", ""), sess,
                                  notice=request.query_params.get("done", ""))

    async def enrol(request: Request) -> Response:
        """Preview (DetectFaces: the crop that would be stored) or enrol; the image rides along as a
        hidden field after a preview so the admin does not upload it twice."""
        sess, form = await require(request, admin=True)
        assert form is not None
        name = str(form.get("watchlist") or "")
        data = await _upload(form, "photo")
        if not data and form.get("image_b64"):
            try:
                data = base64.b64decode(str(form.get("image_b64")), validate=True)
            except ValueError:
                data = b""
        fields = {k: str(form.get(k) or "") for k in ("person_id", "display_name")}
        if not data:
            return await persons_page(request, name, sess, 400, form=fields, error="choose a photo of the person")
        if form.get("step") == "preview":
            res = await stubs().watchlists.DetectFaces(pb.DetectFacesRequest(image=pb.Image(encoded=data)),
                                                       metadata=sess.metadata, timeout=60)
            return await persons_page(request, name, sess, form=fields,
                                      preview={"crop": b64(res.crop), "problem": res.problem,
                                               "faces": len(res.faces), "image": b64(data)})
        add = form.get("add_to_existing") == "1"
        try:
            person = await stubs().watchlists.EnrollPerson(pb.EnrollPersonRequest(
                watchlist=name, person_id=fields["person_id"].strip(), display_name=fields["display_name"].strip(),
                images=[pb.Image(encoded=data)], add_to_existing=add), metadata=sess.metadata, timeout=60)
        except grpc.aio.AioRpcError as exc:  # the id is taken: ask (their photo beside) or say it is a duplicate
            if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
                raise
            conflict = {"person_id": fields["person_id"].strip(), "image": b64(data),
                        "ask": exc.code() == grpc.StatusCode.FAILED_PRECONDITION}
            return await persons_page(request, name, sess, 409, form=fields, error=exc.details(), conflict=conflict)
        return RedirectResponse(f"/persons?{_qs(name=name, done=f'enrolled {person.person_id}')}", 303)

    async def person_remove(request: Request) -> Response:
        sess, form = await require(request, admin=True)
        assert form is not None
        name, pid = str(form.get("watchlist") or ""), str(form.get("person_id") or "")
        res = await stubs().watchlists.RemovePerson(pb.PersonRequest(watchlist=name, person_id=pid),
                                                    metadata=sess.metadata, timeout=30)
        done = f"removed {pid} ({res.templates_removed} templates, photo and events erased)"
        return RedirectResponse(f"/persons?{_qs(name=name, done=done)}", 303)

    async def person_photo(request: Request) -> Response:
        sess, _ = await require(request)
        q = request.query_params
        try:
            photo = await stubs().watchlists.GetPersonPhoto(
                pb.PersonRequest(watchlist=q.get("w", ""), person_id=q.get("p", "")), metadata=sess.metadata,
                timeout=15)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return Response(status_code=404)
            raise
        return Response(photo.jpeg, media_type="image/jpeg")

    # ---- cameras -------------------------------------------------------------------------------
    async def cameras(request: Request) -> Response:
        sess, _ = await require(request)
        res = await stubs().cameras.ListCameras(pb.ListCamerasRequest(), metadata=sess.metadata, timeout=15)
        tpl = "cameras_table.html" if request.query_params.get("fragment") else "cameras.html"
        return render(request, tpl, cameras=list(res.cameras), notice=request.query_params.get("done", ""))

    async def camera_add(request: Request) -> Response:
        sess, form = await require(request, admin=True)
        assert form is not None
        await stubs().cameras.AddCamera(pb.AddCameraRequest(camera_id=str(form.get("camera_id") or "").strip(),
                                                            uri=str(form.get("uri") or "push").strip()),
                                        metadata=sess.metadata, timeout=15)
        return RedirectResponse("/cameras?done=added", 303)

    async def camera_remove(request: Request) -> Response:
        sess, form = await require(request, admin=True)
        assert form is not None
        await stubs().cameras.RemoveCamera(pb.CameraRequest(camera_id=str(form.get("camera_id") or "")),
                                           metadata=sess.metadata, timeout=15)
        return RedirectResponse("/cameras?done=removed", 303)

    # ---- errors --------------------------------------------------------------------------------
    def wants_html(request: Request) -> bool:
        return "text/html" in request.headers.get("accept", "") and request.method == "GET"

    async def on_no_session(request: Request, exc: Exception) -> Response:
        if wants_html(request):
            return RedirectResponse("/login", 303)
        return Response("sign in first", 401, media_type="text/plain")

    async def on_bad_csrf(request: Request, exc: Exception) -> Response:
        return Response("CSRF check failed: reload the page and try again", 403, media_type="text/plain")

    async def on_forbidden(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", 403, error="this action needs an admin token")

    async def on_rpc_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, grpc.aio.AioRpcError)
        code = exc.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:  # token revoked since sign-in
            resp = RedirectResponse("/login", 303)
            resp.delete_cookie(SESSION_COOKIE, path="/")
            return resp
        status = {grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
                  grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.ALREADY_EXISTS: 409,
                  grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.RESOURCE_EXHAUSTED: 429
                  }.get(code, 502)
        msg = f"{code.name}: {exc.details()}"
        if request.headers.get("x-requested-with") == "console":
            return Response(msg, status, media_type="text/plain")
        return render(request, "error.html", status, error=msg)

    async def on_value_error(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", 400, error=str(exc))

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if "s" in state:
            await state["s"].channel.close()

    routes = [
        Route("/", index),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/live", live),
        Route("/live/stream", live_stream),
        Route("/alerts/ack", acknowledge, methods=["POST"]),
        Route("/history", history),
        Route("/history.csv", history_csv),
        Route("/search", search, methods=["GET", "POST"]),
        Route("/watchlists", watchlists),
        Route("/watchlists/create", watchlist_create, methods=["POST"]),
        Route("/watchlists/delete", watchlist_delete, methods=["POST"]),
        Route("/persons", persons),
        Route("/persons/enrol", enrol, methods=["POST"]),
        Route("/persons/remove", person_remove, methods=["POST"]),
        Route("/photo", person_photo),
        Route("/cameras", cameras),
        Route("/cameras/add", camera_add, methods=["POST"]),
        Route("/cameras/remove", camera_remove, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        _NoSession: on_no_session, _BadCSRF: on_bad_csrf, _Forbidden: on_forbidden,
        grpc.aio.AioRpcError: on_rpc_error, ValueError: on_value_error}
    app = Starlette(routes=routes, exception_handlers=handlers,  # type: ignore[arg-type]
                    lifespan=contextlib.asynccontextmanager(lifespan))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # type: ignore[arg-type]
    app.add_middleware(SecurityHeaders)  # type: ignore[arg-type]
    return app


async def _upload(form: FormData, key: str) -> bytes:
    f = form.get(key)
    if isinstance(f, UploadFile):
        data = await f.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise ValueError(f"photo larger than {MAX_UPLOAD // (1024 * 1024)} MiB")
        return data
    return b""


def _qs(**kw: str) -> str:
    from urllib.parse import urlencode

    return urlencode(kw)
