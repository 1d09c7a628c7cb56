"""Serving: an HTTP API, a durable job store and one worker per device (issue 21)."""
