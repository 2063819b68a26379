"""The front door's HAProxy configuration, rendered from its policy (frontdoor.py); pure.

Two backends share the same replica slots: `recommend` (POST /recommend, at most
`per_replica_in_flight` a replica) and `ingress` (every other route, `other_in_flight`; its servers
track the first backend's health). A /recommend that no replica can take in time (the queue past its
length, `queue_timeout_ms` spent waiting, no replica up, or a replica that failed mid-answer and no
other to retry on) is answered by HAProxy itself: with `past_capacity: coarse` a 200 in the normal
response schema (`degraded: true`, `fallback: overloaded` or `ingress_unavailable`), the popularity
list of the serving bundle for the request's k, from maps the supervisor rewrites when what serves
changes (harness/door.py); with `refuse`, 503 + Retry-After. The request id is the client's
X-Request-ID when it is sane, else one HAProxy makes; it is forwarded to the replica and echoed.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serve_app.control.frontdoor import OTHER, RECOMMEND, BalancerPolicy, slot_name

FRONTEND = "recsys"  # the one frontend, whose counters say how much the door answers itself
DOOR_ARRIVED_HEADER = "X-Recsys-Door-Arrived"  # request/deadlines.py reads it: the deadline starts here
DOOR_QUEUE_HEADER = "X-Recsys-Door-Queue"  # serve_app/telemetry/load_signal.py reads it (control may
# import only core, so the name is written twice; tests/unit/test_autoscaling.py checks they agree)

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"  # what the ingress accepts as X-Request-ID (api/http.py)
DEFAULT_K = 10  # /recommend's k when the body names none (api/schemas.py)
IS_RECOMMEND = "is_recommend is_post"  # POST /recommend (lines of one acl name are ORed: two names)
ANSWERABLE = "answerable"  # a POST /recommend the door can answer for itself (_coarse_rules)
# Why the door answered a /recommend itself: the fallback it names, and the degraded reason it gives.
OVERLOADED, UNAVAILABLE = "overloaded", "ingress_unavailable"
COARSE = {
    "full": (OVERLOADED, "the front door answered: every Ingress replica was busy and its queue full"),
    "waited": (OVERLOADED, "the front door answered: no Ingress replica was free within the queue time"),
    "none_up": (UNAVAILABLE, "the front door answered: no Ingress replica is up"),
    "failed": (UNAVAILABLE, "the front door answered: the Ingress replica failed and no other could answer"),
}
DOOR_FALLBACKS = frozenset({OVERLOADED, UNAVAILABLE})


@dataclass(frozen=True)
class Paths:
    """Files of one running door: under its run directory, but for the admin socket (below)."""

    run_dir: Path

    @property
    def config(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def socket(self) -> Path:
        # Unix socket paths must stay short (HAProxy: 97 characters): in the temp dir, named by a hash of
        # the run directory, so two checkouts never share one.
        digest = hashlib.sha1(str(self.run_dir.resolve()).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"recsys-haproxy-{digest}.sock"

    def error_page(self, status: int) -> Path:
        return self.run_dir / f"{status}.http"

    def coarse_body(self, case: str) -> Path:
        return self.run_dir / f"coarse-{case}.json"

    @property
    def items_map(self) -> Path:  # k -> the popularity list's top k, as JSON
        return self.run_dir / "items.map"

    @property
    def serving_map(self) -> Path:  # "bundle" -> the version whose list items.map holds
        return self.run_dir / "serving.map"

    @property
    def limits_map(self) -> Path:  # "queue" -> how many may wait for a replica (frontdoor.queue_limit)
        return self.run_dir / "limits.map"


_REASONS = {
    502: ("Bad Gateway", "unavailable", "an ingress replica failed while answering; retry"),
    503: ("Service Unavailable", "overloaded", "every ingress replica is busy and the queue is full"),
    504: ("Gateway Timeout", "unavailable", "an ingress replica did not answer in time; retry"),
}


def error_body(status: int, policy: BalancerPolicy) -> str:
    _, code, message = _REASONS[status]
    return json.dumps({"error": code, "message": f"{message} (retry after {policy.retry_after_s} s)"})


def error_page(status: int, policy: BalancerPolicy) -> bytes:
    """A whole HTTP response in the app's error shape, for HAProxy's `errorfile`."""
    reason = _REASONS[status][0]
    body = error_body(status, policy)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Retry-After: {policy.retry_after_s}\r\nCache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return (head + body).encode()


def coarse_body(case: str) -> str:
    """The door's answer to /recommend, in RecommendResponse's schema, as HAProxy log-format: the
    request's user id, the list for its k and the serving bundle's version come from variables, and
    for a queue that could not be served (`waited`: HAProxy's own 503) why, from the request's time."""
    fallback, reason = COARSE[case]
    if case == "waited":  # the same 503 means a wait past the queue's time or no replica up at all
        fallback, reason = "%[var(txn.why)]", "%[var(txn.why_text)]"
    return (
        '{"user_id":%[var(txn.user_id)],"items":%[var(txn.items)],"bundle_version":"%[var(txn.version)]",'
        f'"degraded":true,"fallback":"{fallback}","request_id":"%[var(txn.rid)]",'
        f'"degraded_reason":"{reason}","timings_ms":null,"filtered":null,"user_features":null}}\n'
    )


def _servers(policy: BalancerPolicy, ports: list[int], track: str | None) -> list[str]:
    out = []
    for i in range(policy.max_replicas):
        address = f"127.0.0.1:{ports[i]}" if i < len(ports) else "127.0.0.1:1 disabled"
        follow = f" track {track}/{slot_name(i)}" if track else ""
        out.append(f"    server {slot_name(i)} {address}{follow}")
    return out


def _refusal(policy: BalancerPolicy, condition: str) -> str:
    body = error_body(503, policy).replace('"', '\\"')
    return (
        f"    http-request return status 503 content-type application/json hdr Retry-After "
        f'{policy.retry_after_s} hdr X-Request-ID %[var(txn.rid)] string "{body}" if {condition}'
    )


def _why(case: str, condition: str) -> list[str]:
    """Set why a queued request was not served, for HAProxy's own 503 (no quote or comma in a reason:
    HAProxy parses it as a sample's argument)."""
    fallback, reason = COARSE[case]
    return [
        f"    http-request set-var(txn.why) str({fallback}) if {condition}",
        f'    http-request set-var(txn.why_text) str("{reason}") if {condition}',
    ]


# JSON integer literals as the schema takes them (strict: not "5", 5.0, 1e3 or true), for json_query's
# 'int' reading, which would take each of those as a number: a body whose id or k is not one goes to a
# replica, which answers what is wrong with it (422). HAProxy's untyped json_query formats numbers with
# %g (1000719 -> 1.00072e+06), hence 'int'.
_SPACE = "[[:space:]]*"
_LITERAL = {
    "id_literal": f"'\"user_id\"{_SPACE}:{_SPACE}[0-9]{{1,19}}{_SPACE}[,}}]'",
    "k_named": f"'\"k\"{_SPACE}:'",
    "k_literal": f"'\"k\"{_SPACE}:{_SPACE}[0-9]{{1,3}}{_SPACE}[,}}]'",
}


def _coarse_rules(policy: BalancerPolicy, paths: Paths) -> list[str]:
    """The frontend rules that read what a coarse answer needs from each /recommend (its body is
    buffered: `option http-buffer-request`) and answer it when the queue is past its length."""
    readable = "id_found id_literal k_known"
    return [
        *(f"    acl {name} req.body -m reg {pattern}" for name, pattern in _LITERAL.items()),
        f"    http-request set-var(txn.user_id) req.body,json_query('$.user_id','int') if {IS_RECOMMEND}",
        f"    http-request set-var(txn.k) req.body,json_query('$.k','int') if {IS_RECOMMEND} k_literal",
        f"    http-request set-var(txn.k) int({DEFAULT_K}) if {IS_RECOMMEND} !k_named",
        f"    http-request set-var(txn.items) var(txn.k),map_int({paths.items_map}) if {IS_RECOMMEND}",
        f"    http-request set-var(txn.version) str(bundle),map({paths.serving_map},unknown) "
        f"if {IS_RECOMMEND}",
        *_why("waited", IS_RECOMMEND),
        *_why("none_up", f"{IS_RECOMMEND} {{ nbsrv({RECOMMEND}) eq 0 }}"),
        # (Lines of one acl name are ORed, and a condition is a list of names: the door answers for a
        # body whose id and k it read as the schema would, with k one of the items map's keys.)
        "    acl id_found var(txn.user_id) -m found",
        "    acl k_known var(txn.items) -m found",
        f"    http-request set-var(txn.answerable) bool(1) if {IS_RECOMMEND} {readable} !k_named",
        f"    http-request set-var(txn.answerable) bool(1) if {IS_RECOMMEND} {readable} k_literal",
        f"    acl {ANSWERABLE} var(txn.answerable) -m bool",
        f"    http-request return status 200 content-type application/json lf-file "
        f"{paths.coarse_body('full')} hdr X-Request-ID %[var(txn.rid)] hdr Cache-Control no-store "
        f"if {ANSWERABLE} full",
    ]


def _coarse_errors(paths: Paths) -> list[str]:
    """The recommend backend's own 503 (queue timeout, no replica up) and 502/504 (a replica failed
    and no other could take the request) become the coarse answer; a replica's own answers pass."""
    out = []
    for status, case in ((503, "waited"), (502, "failed"), (504, "failed")):
        out.append(
            f"    http-error status {status} content-type application/json lf-file {paths.coarse_body(case)} "
            "hdr X-Recsys-Door coarse hdr X-Request-ID %[var(txn.rid)] hdr Cache-Control no-store"
        )
    return [
        *out,
        "    http-after-response set-status 200 if { res.hdr(x-recsys-door) -m str coarse }",
        "    http-after-response del-header X-Recsys-Door",
    ]


def render(policy: BalancerPolicy, paths: Paths, ports: list[int], listen_fd: int | None = None) -> str:
    """The HAProxy configuration with `ports` in the first slots and the other slots in maintenance;
    with `listen_fd`, HAProxy accepts on that inherited, listening socket instead of binding its own."""
    if len(ports) > policy.max_replicas:
        raise ValueError(f"{len(ports)} ingress ports but max_replicas is {policy.max_replicas}")
    coarse = policy.past_capacity == "coarse"
    address = f"fd@{listen_fd}" if listen_fd is not None else f"{policy.host}:{policy.port}"
    inter = policy.health_check_interval_ms
    to_recommend = ANSWERABLE if coarse else IS_RECOMMEND
    return "\n".join(
        [
            "global",
            "    maxconn 4000",
            # One thread: on a node of a few cores the answers need the CPU; HAProxy needs little.
            "    nbthread 1",
            f"    stats socket {paths.socket} mode 600 level admin",
            "defaults",
            "    mode http",
            "    timeout connect 1s",
            "    timeout client 30s",
            f"    timeout server {policy.server_timeout_s:g}s",
            f"    timeout queue {policy.queue_timeout_ms}ms",
            "    timeout http-request 5s",
            "    timeout http-keep-alive 30s",
            "    option http-no-delay",
            # The whole (small) body before a replica is picked: the coarse answer reads it, and a
            # request a dying replica dropped can be sent again to another one (every route is a read
            # or deduplicates: events by their ids).
            "    option http-buffer-request",
            "    option redispatch 1",
            "    retry-on conn-failure empty-response",
            "    retries 2",
            "    unique-id-format %{+X}o%ci%cp%fp%Ts%rt%pid",
            *[f"    errorfile {s} {paths.error_page(s)}" for s in sorted(_REASONS)],
            f"frontend {FRONTEND}",
            f"    bind {address}",
            f"    acl sane_id req.hdr(x-request-id) -m reg {ID_PATTERN}",
            "    http-request set-var(txn.rid) req.hdr(x-request-id) if sane_id",
            "    http-request set-var(txn.rid) unique-id unless { var(txn.rid) -m found }",
            "    http-request set-header X-Request-ID %[var(txn.rid)]",
            # What waits here, for the replicas to report to Serve's autoscaler (serve/autoscaling.py):
            # set on every request, so a client's own header never reaches a replica.
            f"    http-request set-header {DOOR_QUEUE_HEADER} %[queue({RECOMMEND})]",
            # When it arrived (wall-clock ms): the time it waits here and in a replica comes off its
            # deadline, so an answer is due by the client's deadline, not the replica's own.
            f"    http-request set-header {DOOR_ARRIVED_HEADER} %[date(0,ms)]",
            "    acl is_recommend path /recommend",
            "    acl is_post method POST",
            f"    http-request set-var(txn.qmax) str(queue),map_str_int({paths.limits_map},"
            f"{policy.min_queue})",
            f"    acl full queue({RECOMMEND}),sub(txn.qmax) ge 0",
            f"    acl other_full queue({OTHER}) ge {policy.min_queue}",
            *(_coarse_rules(policy, paths) if coarse else []),
            # Refused before any replica sees it: the cheap answer that keeps goodput at capacity. Under
            # `coarse`, a /recommend the door cannot read goes on to a replica, as the other routes do.
            *([] if coarse else [_refusal(policy, f"{IS_RECOMMEND} full")]),
            *(_refusal(policy, f"!{name} other_full") for name in to_recommend.split()),
            f"    use_backend {RECOMMEND} if {to_recommend}",
            f"    default_backend {OTHER}",
            f"backend {RECOMMEND}",
            f"    balance {policy.balance}",
            "    http-reuse always",
            "    option httpchk GET /healthz",
            "    http-check expect status 200",
            *(_coarse_errors(paths) if coarse else []),
            f"    default-server check inter {inter}ms fastinter {max(100, inter // 4)}ms "
            f"downinter {max(100, inter // 2)}ms fall 2 rise 1 maxconn {policy.per_replica_in_flight} "
            "observe layer4 error-limit 1 on-error mark-down",
            *_servers(policy, ports, None),
            f"backend {OTHER}",
            f"    balance {policy.balance}",
            "    http-reuse always",
            f"    default-server maxconn {policy.other_in_flight}",
            *_servers(policy, ports, RECOMMEND),
            "",
        ]
    )
