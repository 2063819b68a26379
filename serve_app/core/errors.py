"""One error hierarchy, classified by who is at fault, each error knowing its HTTP answer.

Client errors (4xx) come from the HTTP models' validation and say what the caller must fix (see
serve_app/api/http.py); dependency errors (503 + Retry-After) mean something we rely on refused or is not
ready yet; data, bundle and config errors stop a build or a bundle load with a message naming what is
wrong. serve_app/api/http.py turns any of them that reaches a route into `{"error": code, "message": ...}`
with `http_status`.
"""

from __future__ import annotations

RETRY_AFTER_S = 1


class RecsysError(Exception):
    http_status: int = 500
    code: str = "internal_error"
    retry_after_s: int | None = None


class DependencyError(RecsysError):
    """A dependency (online store, a replica) failed or missed its deadline."""

    http_status = 503
    code = "unavailable"
    retry_after_s = RETRY_AFTER_S


class Overloaded(DependencyError):
    """A queue on the request path is full: tell the client to retry, at once, instead of waiting."""

    code = "overloaded"


class NotReady(DependencyError):
    """This replica, or a stage it calls, cannot answer yet (a readiness check's 503)."""

    code = "not_ready"


class DataError(RecsysError):
    """Input data (CSV files, generator flags) is malformed; names the file and line when it can."""

    code = "bad_data"


class BundleError(RecsysError):
    """A bundle is missing, corrupt or does not agree with this code; it must not be served."""

    code = "bad_bundle"


class ConfigError(RecsysError):
    code = "bad_config"
