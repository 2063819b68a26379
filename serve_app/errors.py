"""One error hierarchy, classified by who is at fault, each error knowing its HTTP status.

Client errors (4xx) come from the HTTP models' validation and say what the caller must fix (see
serve_app/http.py); dependency errors (503) mean something we rely on refused or failed; data, bundle
and config errors stop a build or a bundle load with a message naming what is wrong.
"""

from __future__ import annotations


class RecsysError(Exception):
    http_status: int = 500


class DependencyError(RecsysError):
    """A dependency (online store, a replica) failed or missed its deadline."""

    http_status = 503


class DataError(RecsysError):
    """Input data (CSV files, generator flags) is malformed; names the file and line when it can."""


class BundleError(RecsysError):
    """A bundle is missing, corrupt or does not agree with this code; it must not be served."""


class ConfigError(RecsysError):
    pass
