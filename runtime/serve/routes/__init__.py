"""The server's routes, one router per file; create_app includes them all. They import fastapi, so they are imported
only once `create_app` has checked the `serve` extra is installed."""
