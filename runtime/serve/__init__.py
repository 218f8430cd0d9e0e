"""`moai-edge serve`: the package behind a localhost HTTP server (extra `serve`)."""
