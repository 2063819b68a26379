"""The import path Serve configs name: `import_path: serve_app.app:build_app` (the app is serve/app.py).

Kept here so that deployed configs, running clusters and in-place rollouts do not depend on where the
Serve layer lives inside the package.
"""

from serve_app.serve.app import AppArgs, Ingress, build_app

__all__ = ["AppArgs", "Ingress", "build_app"]
