"""API tokens, roles and the audit log, enforced by one gRPC server interceptor.

Tokens are random (256 bits), shown once at creation and stored only as SHA-256 hashes. A call
carries `authorization: Bearer <token>`; the interceptor resolves it to a (name, role) and checks
the method against `METHOD_ROLES`, the single access table. A method missing from the table is
denied, so a new RPC fails closed until someone decides who may call it. Health checking and
reflection stay open. Calls listed in `AUDITED` are written to the store's append-only audit log
with the caller, the target and the outcome (OK or the gRPC status code name).

Hardening: every denial is audited (UNAUTHENTICATED with the peer address, PERMISSION_DENIED for any
method); a peer with `auth.max_failures` failed authentications in `auth.failure_window_s` is
refused (RESOURCE_EXHAUSTED) without a token look-up until the window ends, with one THROTTLED row
when it starts and one with the refused count when it ends; a change (`MUTATIONS`) writes an ATTEMPT
row first and is refused with UNAVAILABLE when that row cannot be written (fail closed); open
streams re-check their token every `auth.recheck_s` and end with UNAUTHENTICATED once it is revoked.

Roles:
  gateway   Ingest.StreamFrames, and AddCamera for push cameras, both only for the cameras its scope
            names (`TokenScope.cameras`, exact ids or patterns such as `door-*`); its frame results carry
            no identities (person, name, score) unless its scope says `identities`.
  operator  live and historical matches, acknowledging or dismissing alerts, search, verify, and
            read-only views of cameras, watchlists, persons and their photos (an operator must know
            what it is looking at); WhoAmI, the console's sign-in check.
  admin     everything: cameras, watchlists, enrolment and removal, tokens, the audit log; erasing
            sightings and enrolling a recurring unknown (operators search sightings and list clusters).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from engine.config import AuthConfig
from engine.errors import (
    AuditUnavailableError,
    FaceEngineError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnavailableError,
)
from engine.service.convert import unary
from engine.service.interceptors import Undecodable, rewrap
from engine.service.proto import pb, rpc
from engine.store.base import AuditStore, TokenStore

log = logging.getLogger(__name__)

ROLES = ("gateway", "operator", "admin")
_PKG = "/faceengine.v1."
_ADMIN = frozenset({"admin"})
_OPERATOR = frozenset({"operator", "admin"})
_GATEWAY = frozenset({"gateway", "admin"})

# The ONE access table: full method name -> roles allowed. Unlisted methods are denied.
METHOD_ROLES: dict[str, frozenset[str]] = {
    f"{_PKG}Ingest/StreamFrames": _GATEWAY,
    f"{_PKG}Cameras/AddCamera": _GATEWAY,  # a gateway: push cameras of its scope only (CamerasServicer)
    f"{_PKG}Cameras/RemoveCamera": _ADMIN,
    f"{_PKG}Cameras/GetCamera": _OPERATOR,
    f"{_PKG}Cameras/ListCameras": _OPERATOR,
    f"{_PKG}Watchlists/CreateWatchlist": _ADMIN,
    f"{_PKG}Watchlists/DeleteWatchlist": _ADMIN,
    f"{_PKG}Watchlists/EnrollPerson": _ADMIN,
    f"{_PKG}Watchlists/RemovePerson": _ADMIN,
    f"{_PKG}Watchlists/ListWatchlists": _OPERATOR,
    f"{_PKG}Watchlists/GetPerson": _OPERATOR,
    f"{_PKG}Watchlists/ListPersons": _OPERATOR,
    f"{_PKG}Watchlists/GetPersonPhoto": _OPERATOR,
    f"{_PKG}Watchlists/DetectFaces": _ADMIN,
    f"{_PKG}Matches/SubscribeMatches": _OPERATOR,
    f"{_PKG}Matches/QueryMatches": _OPERATOR,
    f"{_PKG}Matches/SearchByImage": _OPERATOR,
    f"{_PKG}Matches/Verify": _OPERATOR,
    f"{_PKG}Matches/AcknowledgeMatch": _OPERATOR,
    f"{_PKG}Admin/QueryAudit": _ADMIN,
    f"{_PKG}Admin/CreateToken": _ADMIN,
    f"{_PKG}Admin/ListTokens": _ADMIN,
    f"{_PKG}Admin/RevokeToken": _ADMIN,
    f"{_PKG}Admin/WhoAmI": _OPERATOR,  # gateway tokens are refused: they cannot sign in to the console
    f"{_PKG}Sightings/SearchSightings": _OPERATOR,
    f"{_PKG}Sightings/ListUnknownClusters": _OPERATOR,
    f"{_PKG}Sightings/EraseSightings": _ADMIN,
    f"{_PKG}Sightings/EnrollCluster": _ADMIN,
}

# Open to anyone (no token): liveness probes and API discovery.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


def _person_target(r: Any) -> str:
    return f"{r.watchlist}/{r.person_id}"


def _query_target(r: Any) -> str:
    parts = [f"{k}={v}" for k, v in (("camera", r.camera_id), ("watchlist", r.watchlist),
                                      ("person", r.person_id)) if v]
    return ";".join(parts) or "*"


def _sightings_query_target(r: Any) -> str:
    """A sightings search is audited with the SHA-256 of its query (photo or embedding), never the photo."""
    kind = r.WhichOneof("query")
    digest = hashlib.sha256(getattr(r, kind).SerializeToString() if kind else b"").hexdigest()
    parts = [f"query_sha256={digest}", f"kind={kind or 'none'}"]
    parts += [f"{k}={v:.0f}" for k, v in (("since", r.since), ("until", r.until)) if v]
    parts += [f"camera={c}" for c in r.camera_ids]
    return ";".join(parts)


def _range_target(r: Any) -> str:
    parts = [f"{k}={v:.0f}" for k, v in (("since", r.since), ("until", r.until)) if v]
    return ";".join(parts + [f"camera={c}" for c in r.camera_ids]) or "*"


# Audited methods -> the audit target taken from the request (action = the method's short name).
AUDITED: dict[str, Callable[[Any], str]] = {
    f"{_PKG}Watchlists/CreateWatchlist": lambda r: r.name,
    f"{_PKG}Watchlists/DeleteWatchlist": lambda r: r.name,
    f"{_PKG}Watchlists/EnrollPerson": _person_target,
    f"{_PKG}Watchlists/RemovePerson": _person_target,
    f"{_PKG}Cameras/AddCamera": lambda r: r.camera_id,
    f"{_PKG}Cameras/RemoveCamera": lambda r: r.camera_id,
    f"{_PKG}Matches/QueryMatches": _query_target,
    f"{_PKG}Matches/SubscribeMatches": lambda r: ";".join(
        [*(f"camera={c}" for c in r.camera_ids), *(f"watchlist={w}" for w in r.watchlists)]) or "*",
    f"{_PKG}Matches/SearchByImage": lambda r: ",".join(r.watchlists) or "*",
    f"{_PKG}Matches/Verify": lambda r: "",
    f"{_PKG}Matches/AcknowledgeMatch": lambda r: r.event_id,
    f"{_PKG}Watchlists/DetectFaces": lambda r: "",
    f"{_PKG}Admin/CreateToken": lambda r: r.name,
    f"{_PKG}Admin/RevokeToken": lambda r: r.name,
    f"{_PKG}Admin/QueryAudit": lambda r: r.action or "*",
    f"{_PKG}Sightings/SearchSightings": _sightings_query_target,
    f"{_PKG}Sightings/EraseSightings": _range_target,
    f"{_PKG}Sightings/ListUnknownClusters": lambda r: ";".join(
        f"{k}={v:.0f}" for k, v in (("since", r.since), ("until", r.until)) if v) or "*",
    f"{_PKG}Sightings/EnrollCluster": _person_target,
}


# Methods that change state: their audit record is written first and the change is refused if it cannot be.
MUTATIONS: frozenset[str] = frozenset(f"{_PKG}{m}" for m in (
    "Cameras/AddCamera", "Cameras/RemoveCamera", "Watchlists/CreateWatchlist", "Watchlists/DeleteWatchlist",
    "Watchlists/EnrollPerson", "Watchlists/RemovePerson", "Admin/CreateToken", "Admin/RevokeToken",
    "Matches/AcknowledgeMatch", "Sightings/EraseSightings", "Sightings/EnrollCluster"))

UNAUTHENTICATED_ACTOR = "(unauthenticated)"


# ---- tokens ------------------------------------------------------------------------------------
def hash_token(token: str) -> str:
    """SHA-256 hex of a token: enough for 256-bit random secrets (no salt or stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenScope:
    """What a gateway token may reach beyond its role: the cameras it may feed and register as push
    cameras (exact ids or fnmatch patterns, e.g. `door-*`), and whether its frame results name the
    persons recognised. Operator and admin tokens are not narrowed by a scope."""

    cameras: tuple[str, ...] = ()
    identities: bool = False

    def to_json(self) -> str:
        return json.dumps({"cameras": list(self.cameras), "identities": self.identities}) if self != TokenScope() \
            else ""

    @classmethod
    def from_json(cls, text: str) -> TokenScope:
        """The stored scope; an empty or unreadable one is the narrowest (no camera, no identities)."""
        try:
            d = json.loads(text) if text else {}
            return cls(tuple(str(c) for c in d.get("cameras", ()) if c), bool(d.get("identities", False)))
        except (ValueError, TypeError, AttributeError):
            log.error("token scope %r is unreadable: treated as empty (no cameras)", text[:200])
            return cls()

    def allows_camera(self, camera_id: str) -> bool:
        return any(fnmatch.fnmatchcase(camera_id, pattern) for pattern in self.cameras)

    def describe(self) -> str:
        return (f"cameras {', '.join(self.cameras) or '(none)'}, "
                f"{'with' if self.identities else 'without'} identities")


def create_token(store: TokenStore, name: str, role: str, cameras: tuple[str, ...] | list[str] = (),
                 identities: bool = False) -> tuple[str, float]:
    """Make and store a new token; returns (the token, shown once, creation time).

    A gateway token must name its cameras (`cameras`: ids or patterns); for other roles a scope is
    refused, since they are not narrowed by one."""
    if role not in ROLES:
        raise InvalidArgumentError(f"role {role!r} unknown; use one of {', '.join(ROLES)}")
    cams = tuple(c.strip() for c in cameras if c.strip())
    if role == "gateway" and not cams:
        raise InvalidArgumentError(
            "a gateway token must name the cameras it may feed: --camera ID (repeat it, or a pattern such as "
            "'door-*'); add --identities if its frame results may name the persons recognised")
    if role != "gateway" and (cams or identities):
        raise InvalidArgumentError(f"a scope (--camera, --identities) narrows gateway tokens only; an {role} "
                                   "token reaches every camera and identity its role allows")
    for c in cams:
        if len(c) > 128:
            raise InvalidArgumentError(f"camera scope {c[:40]!r}... is longer than 128 characters")
    token = "fe_" + secrets.token_urlsafe(32)
    return token, store.create_token(name, role, hash_token(token), TokenScope(cams, identities).to_json())


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    scope_json: str = ""

    @property
    def scope(self) -> TokenScope:
        return TokenScope.from_json(self.scope_json)

    def sees_identities(self) -> bool:
        """Whether results for this caller may name persons (gateways only when their scope says so)."""
        return self.role != "gateway" or self.scope.identities

    def check_camera(self, camera_id: str, what: str = "feed") -> None:
        """Raise PermissionDeniedError unless this caller may feed (or register) this camera; the
        message says what an admin must run."""
        if self.role != "gateway" or self.scope.allows_camera(camera_id):
            return
        raise PermissionDeniedError(
            f"gateway token {self.name!r} may not {what} camera {camera_id!r} (its scope: {self.scope.describe()}); "
            f"an admin must run: faceengine token revoke {self.name} && faceengine token create --name {self.name} "
            f"--role gateway --camera {camera_id}")


ANONYMOUS = Principal("anonymous", "auth-off")


@dataclass
class CallInfo:
    """What the interceptor knows about the current call; servicers may add audit detail."""

    principal: Principal
    method: str
    details: list[str] = field(default_factory=list)
    token_hash: str = ""
    revoked: threading.Event = field(default_factory=threading.Event)


_local = threading.local()


def current() -> CallInfo | None:
    """The call being served on this thread (None outside the interceptor)."""
    return getattr(_local, "call", None)


def call_revoked() -> bool:
    """True once the current stream's token was revoked: a long-lived servicer loop should end."""
    info = current()
    return info is not None and info.revoked.is_set()


def add_audit_detail(text: str) -> None:
    """Attach a detail (e.g. 'events_erased=3') to the current call's audit record."""
    info = current()
    if info is not None:
        info.details.append(text)


# ---- interceptor -------------------------------------------------------------------------------
class _AuthStore(AuditStore, TokenStore, Protocol):
    """The two store roles the auth layer uses: tokens to check callers, audit to record calls."""


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates, authorises (METHOD_ROLES) and audits (AUDITED) every call.

    The checks run inside the wrapped handler, on the call's worker thread, so a slow store never
    stalls the server's dispatch loop (and health checks)."""

    def __init__(self, store: _AuthStore, cfg: AuthConfig | None = None, enabled: bool | None = None,
                 max_metadata_bytes: int = 8192) -> None:
        self.store = store
        self.cfg = cfg or AuthConfig()
        self.max_metadata_bytes = max_metadata_bytes
        self.enabled = self.cfg.enabled if enabled is None else enabled
        self.throttle = _Throttle(self.cfg.max_failures, self.cfg.failure_window_s)
        self._open: dict[int, CallInfo] = {}  # streams whose token is re-checked
        self._open_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop re-checking streams and record the refused counts of peers still throttled."""
        self._closed.set()
        for peer, refused in self.throttle.drain():
            self._write_throttled_end(peer, refused)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        method: str = details.method
        if handler is None:
            return handler
        if method.startswith(OPEN_PREFIXES):  # no token needed; a body that does not parse is still refused
            return rewrap(handler, lambda behavior, streaming: self._open_guard(behavior, method, streaming),
                          lenient_requests=True)
        metadata = details.invocation_metadata or ()
        return rewrap(handler, lambda behavior, streaming: self._guard(behavior, method, metadata, streaming),
                      lenient_requests=True)

    def _client_of(self, peer: str, metadata: Any) -> str:
        """The address failures are counted against: the peer's, or for a trusted proxy (the console on
        this host, by default) the client it names in x-forwarded-for, so one user's mistakes behind it do
        not throttle everyone else behind it (nor a gateway on the same host)."""
        host = _peer_host(peer)
        ip = host.split(":", 1)[-1].strip("[]")
        if ip in self.cfg.trusted_proxies:
            forwarded = [str(v) for k, v in metadata if k == "x-forwarded-for"]
            if forwarded and forwarded[0].strip():
                return f"{host} for {forwarded[0].split(',')[0].strip()[:64]}"
        return host

    def authenticate(self, metadata: Any) -> Principal:
        """Resolve the bearer token; raises _Denied(UNAUTHENTICATED) when missing, bad or revoked, and
        _Denied(RESOURCE_EXHAUSTED) when the call's metadata is larger than limits.max_metadata_bytes
        (counted as a failed authentication, so a flood of them is throttled like bad tokens)."""
        size = sum(len(k) + len(v) for k, v in metadata)
        if size > self.max_metadata_bytes:
            raise _Denied(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"call metadata is {size} bytes, more than limits.max_metadata_bytes "
                          f"({self.max_metadata_bytes})")
        if not self.enabled:
            return ANONYMOUS
        values = [v for k, v in metadata if k == "authorization"]
        if not values:
            raise _Denied(grpc.StatusCode.UNAUTHENTICATED,
                          "missing 'authorization: Bearer <token>' metadata (create a token with "
                          "`faceengine token create`)")
        scheme, _, token = str(values[0]).strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Denied(grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'")
        found = self.store.token_by_hash(hash_token(token.strip()))
        if found is None:
            raise _Denied(grpc.StatusCode.UNAUTHENTICATED, "invalid or revoked API token")
        return Principal(*found)

    def authorize(self, method: str, principal: Principal) -> None:
        if not self.enabled:
            return
        allowed = METHOD_ROLES.get(method)
        if allowed is None:
            raise _Denied(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not in the access table (denied)")
        if principal.role not in allowed:
            raise _Denied(grpc.StatusCode.PERMISSION_DENIED,
                          f"token {principal.name!r} (role {principal.role}) may not call "
                          f"{method.rsplit('/', 1)[-1]}; allowed roles: {', '.join(sorted(allowed))}")

    def _audit(self, info: CallInfo, request: Any, result: str, denial: bool = False, strict: bool = False) -> None:
        """Write the call's audit record. Denials are recorded for every method; `strict` raises
        AuditUnavailableError instead of logging when the record cannot be written."""
        target_of = AUDITED.get(info.method)
        if target_of is None and not denial:
            return
        try:
            target = target_of(request) if (target_of is not None and request is not None) else ""
        except Exception:  # noqa: BLE001 - a malformed request must still be audited
            target = "?"
        try:
            self.store.audit(info.principal.name, info.principal.role, info.method.rsplit("/", 1)[-1],
                             target[:1000], result, " ".join(info.details)[:1000])
        except Exception as exc:
            if strict:
                reason = str(exc) if isinstance(exc, FaceEngineError) else f"{type(exc).__name__}: {exc}"
                raise AuditUnavailableError(
                    f"{info.method.rsplit('/', 1)[-1]} refused: its audit record could not be written ({reason}); "
                    "nothing was changed, retry once the store can write") from exc
            if isinstance(exc, UnavailableError):  # an outage: one line, not a traceback per call
                log.error("audit record for %s could not be written: %s", info.method, exc)
            else:
                log.exception("audit record for %s could not be written", info.method)

    def audit_denial(self, info: CallInfo, detail: str) -> None:
        """Record a PERMISSION_DENIED a servicer decided (a token's scope), as the interceptor's own are."""
        info.details.append(detail)
        self._audit(info, None, "PERMISSION_DENIED", denial=True)

    def _write_throttled_start(self, peer: str) -> None:
        self._raw_audit("THROTTLED", f"peer={peer} {self.throttle.max_failures} failed authentications within "
                        f"{self.throttle.window_s:g} s; calls refused without checking until the window ends")

    def _write_throttled_end(self, peer: str, refused: int) -> None:
        self._raw_audit("THROTTLED", f"peer={peer} window ended; refused={refused} calls while throttled")

    def _raw_audit(self, result: str, detail: str, action: str = "*") -> None:
        try:
            self.store.audit(UNAUTHENTICATED_ACTOR, "none", action, "", result, detail[:1000])
        except Exception:
            log.exception("audit record (%s) could not be written", result)

    # ---- revocation of open streams ------------------------------------------------------------
    def _register(self, info: CallInfo) -> None:
        if not self.enabled or not info.token_hash:
            return
        with self._open_lock:
            self._open[id(info)] = info
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="token-recheck", daemon=True)
                self._watcher.start()

    def _unregister(self, info: CallInfo) -> None:
        with self._open_lock:
            self._open.pop(id(info), None)

    def _watch(self) -> None:
        """Every recheck_s, look up the tokens of open streams; flag the streams of revoked ones."""
        while not self._closed.wait(max(0.05, self.cfg.recheck_s)):
            with self._open_lock:
                calls = list(self._open.values())
                if not calls:
                    self._watcher = None
                    return
            alive: dict[str, bool] = {}
            for h in {c.token_hash for c in calls}:
                try:
                    alive[h] = self.store.token_by_hash(h) is not None
                except Exception:  # store busy or closing: keep the streams, look again next tick
                    alive[h] = True
            for c in calls:
                if not alive[c.token_hash] and not c.revoked.is_set():
                    log.warning("token %r was revoked: ending its open %s stream", c.principal.name,
                                c.method.rsplit("/", 1)[-1])
                    c.revoked.set()

    def _open_guard(self, behavior: Callable[..., Any], method: str, streaming: tuple[bool, bool]
                    ) -> Callable[..., Any]:
        """Open methods (health, reflection): INVALID_ARGUMENT for a body that does not parse."""

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"the {method.rsplit('/', 1)[-1]} request body is not a valid protobuf message")
            if streaming[0]:
                request = self._checked_stream(request, method, context)
            return behavior(request, context)

        return guarded

    def _guard(self, behavior: Callable[..., Any], method: str, metadata: Any, streaming: tuple[bool, bool]
               ) -> Callable[..., Any]:
        request_streaming, response_streaming = streaming

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            peer = self._client_of(context.peer(), metadata)
            audited_request = None if request_streaming else request
            if self.enabled:
                wait = self.throttle.blocked(peer)
                if wait > 0:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"too many failed authentications from {peer}: calls are refused for "
                                  f"{wait:.0f} s more (auth.max_failures, auth.failure_window_s)")
                ended = self.throttle.take_ended(peer)
                if ended is not None:
                    self._write_throttled_end(peer, ended)
            try:
                principal = self.authenticate(metadata)
            except UnavailableError as exc:  # the store does not answer: say so now, not UNKNOWN later
                log.error("%s: token check failed: %s", method, exc)
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except _Denied as exc:
                log.warning("%s: %s (peer %s)", method, exc.message, context.peer())
                info = CallInfo(Principal(UNAUTHENTICATED_ACTOR, "none"), method, [f"peer={peer}", exc.message])
                self._audit(info, audited_request, exc.code.name, denial=True)
                if self.throttle.fail(peer):
                    self._write_throttled_start(peer)
                context.abort(exc.code, exc.message)
            info = CallInfo(principal, method, token_hash=_token_hash(metadata) if self.enabled else "")
            try:
                self.authorize(method, principal)
            except _Denied as exc:
                log.warning("%s denied to %s/%s", method, principal.name, principal.role)
                info.details.append(f"peer={peer}")
                self._audit(info, audited_request, exc.code.name, denial=True)
                context.abort(exc.code, exc.message)
            if isinstance(request, Undecodable):  # after the checks: anonymous garbage was refused above
                self._refuse_undecodable(method, request, peer, principal, context)
            if request_streaming:
                request = self._checked_stream(request, method, context)
            if method in MUTATIONS:  # fail closed: no record, no change
                try:
                    self._audit(info, audited_request, "ATTEMPT", strict=True)
                except AuditUnavailableError as exc:
                    log.error("%s", exc)
                    context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            if response_streaming:
                return self._stream(behavior(request, context), info, audited_request, context)
            if request_streaming:
                self._register(info)
            _local.call = info
            result = "OK"
            try:
                return behavior(request, context)
            except BaseException:
                code = context.code()
                result = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                _cap_details(context)
                raise
            finally:
                _local.call = None
                self._unregister(info)
                self._audit(info, audited_request, result)

        return guarded

    def _refuse_undecodable(self, method: str, request: Undecodable, peer: str, principal: Principal,
                            context: grpc.ServicerContext) -> None:
        """Audit and refuse a request whose body did not parse (one warning line, no traceback)."""
        name = method.rsplit("/", 1)[-1]
        message = f"the {name} request body is not a valid protobuf message ({request.error})"
        log.warning("%s from %s/%s (peer %s): %s", name, principal.name, principal.role, peer, message)
        info = CallInfo(principal, method, [f"peer={peer}", message])
        self._audit(info, None, "INVALID_ARGUMENT", denial=True)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

    @staticmethod
    def _checked_stream(it: Iterator[Any], method: str, context: grpc.ServicerContext) -> Iterator[Any]:
        """The request stream up to its first undecodable message, which ends it and sets the call's
        status to INVALID_ARGUMENT (the servicer sees the end of input)."""
        for item in it:
            if isinstance(item, Undecodable):
                message = (f"a {method.rsplit('/', 1)[-1]} stream message is not a valid protobuf message "
                           f"({item.error}); the stream was ended")
                log.warning("%s", message)
                context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                context.set_details(message)
                return
            yield item

    def _stream(self, it: Iterator[Any], info: CallInfo, request: Any, context: grpc.ServicerContext
                ) -> Iterator[Any]:
        """Run a response stream with the call info set; audit once when it opens (or fails to).
        A stream whose token is revoked meanwhile ends with UNAUTHENTICATED."""
        audited = info.method not in AUDITED
        self._register(info)
        try:
            while True:
                _local.call = info
                try:
                    item = next(it)
                except StopIteration:
                    break
                finally:
                    _local.call = None
                if not audited:
                    audited = True
                    self._audit(info, request, "OK")
                yield item
            if info.revoked.is_set():
                if not audited:
                    audited = True
                    self._audit(info, request, "UNAUTHENTICATED")
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              f"token {info.principal.name!r} was revoked while this stream was open")
        except BaseException:
            if not audited:
                audited = True
                code = context.code()
                self._audit(info, request, code.name if isinstance(code, grpc.StatusCode) else "CANCELLED")
            raise
        finally:
            self._unregister(info)
            if not audited:
                self._audit(info, request, "OK")


class _Throttle:
    """Failed authentications per peer address in a fixed window; past max_failures the peer is refused."""

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max(1, max_failures)
        self.window_s = window_s
        self._lock = threading.Lock()
        self._peers: dict[str, list[float]] = {}  # peer -> [window start, failures, refused]

    def fail(self, peer: str) -> bool:
        """Count a failure; True when this one starts the peer's throttling."""
        now = time.monotonic()
        with self._lock:
            rec = self._peers.get(peer)
            if rec is None or now - rec[0] > self.window_s:
                rec = self._peers[peer] = [now, 0, 0]
            rec[1] += 1
            if len(self._peers) > 10_000:  # a spray of addresses must not grow this without bound
                for p in [p for p, r in self._peers.items() if now - r[0] > self.window_s and r[1] < self.max_failures]:
                    del self._peers[p]
            return rec[1] == self.max_failures

    def blocked(self, peer: str) -> float:
        """Seconds this peer stays refused (counting this call as refused), or 0."""
        now = time.monotonic()
        with self._lock:
            rec = self._peers.get(peer)
            if rec is None or rec[1] < self.max_failures or now - rec[0] > self.window_s:
                return 0.0
            rec[2] += 1
            return max(1.0, self.window_s - (now - rec[0]))

    def take_ended(self, peer: str) -> int | None:
        """The refused count of a throttling window that has ended (once), else None."""
        now = time.monotonic()
        with self._lock:
            rec = self._peers.get(peer)
            if rec is None or now - rec[0] <= self.window_s:
                return None
            del self._peers[peer]
            return int(rec[2]) if rec[1] >= self.max_failures else None

    def drain(self) -> list[tuple[str, int]]:
        with self._lock:
            out = [(p, int(r[2])) for p, r in self._peers.items() if r[1] >= self.max_failures]
            self._peers.clear()
        return out


def _peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> 'ipv4:127.0.0.1' (the port changes with every connection)."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def _token_hash(metadata: Any) -> str:
    values = [v for k, v in metadata if k == "authorization"]
    token = str(values[0]).strip().partition(" ")[2].strip() if values else ""
    return hash_token(token) if token else ""


MAX_DETAILS = 2000


def _cap_details(context: grpc.ServicerContext) -> None:
    """Shorten a status message that echoes a huge request field (e.g. a 10k-character id): status
    details travel in HTTP/2 trailers and clients drop trailers over 8 KiB, turning the precise code
    into RESOURCE_EXHAUSTED."""
    try:
        details = context.details()
    except Exception:  # noqa: BLE001 - older grpc without details()
        return
    if details and len(details) > MAX_DETAILS:
        text = details.decode("utf-8", "replace") if isinstance(details, bytes) else str(details)
        context.set_details(text[: MAX_DETAILS - 40] + f"... ({len(text)} characters, truncated)")


class _Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---- Admin service -----------------------------------------------------------------------------
def _token_info(d: dict[str, Any]) -> pb.TokenInfo:
    scope = TokenScope.from_json(d.get("scope") or "")
    return pb.TokenInfo(name=d["name"], role=d["role"], created=d["created"], revoked=d.get("revoked") or 0.0,
                        cameras=list(scope.cameras), identities=scope.identities)


class AdminServicer(rpc.AdminServicer):
    """Audit log queries and token management (role admin; see METHOD_ROLES)."""

    def __init__(self, store: _AuthStore) -> None:
        self.store = store

    @unary
    def QueryAudit(self, request: pb.AuditQuery, context: grpc.ServicerContext) -> pb.AuditQueryResponse:  # noqa: N802
        limit = max(1, min(request.limit or 100, 1000))
        rows = self.store.query_audit(request.since, limit, request.after_id, request.action)
        return pb.AuditQueryResponse(records=[pb.AuditRecord(
            id=r["id"], time=r["ts"], actor=r["actor"], role=r["role"], action=r["action"], target=r["target"],
            result=r["result"], detail=r["detail"]) for r in rows])

    @unary
    def CreateToken(self, request: pb.CreateTokenRequest, context: grpc.ServicerContext) -> pb.CreateTokenResponse:  # noqa: N802
        token, created = create_token(self.store, request.name, request.role, list(request.cameras),
                                      request.identities)
        add_audit_detail(f"role={request.role}")
        if request.cameras or request.identities:
            add_audit_detail(f"scope={TokenScope(tuple(request.cameras), request.identities).describe()}")
        return pb.CreateTokenResponse(info=pb.TokenInfo(name=request.name, role=request.role, created=created,
                                                        cameras=list(request.cameras), identities=request.identities),
                                      token=token)

    @unary
    def ListTokens(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.ListTokensResponse:  # noqa: N802
        return pb.ListTokensResponse(tokens=[_token_info(t) for t in self.store.list_tokens()])

    @unary
    def WhoAmI(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.TokenInfo:  # noqa: N802
        info = current()
        p = info.principal if info is not None else ANONYMOUS
        return pb.TokenInfo(name=p.name, role=p.role, cameras=list(p.scope.cameras), identities=p.scope.identities)

    @unary
    def RevokeToken(self, request: pb.RevokeTokenRequest, context: grpc.ServicerContext) -> pb.TokenInfo:  # noqa: N802
        return _token_info(self.store.revoke_token(request.name))
