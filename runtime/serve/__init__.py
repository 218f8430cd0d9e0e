"""`moai-edge serve`: the package behind a localhost HTTP server (extra `serve`; its packages are imported when an
app is created)."""

from .app import create_app
from .background import BackgroundServer
from .config import ServeConfig

__all__ = ["BackgroundServer", "ServeConfig", "create_app"]
