"""The REST gateway: a Flask app factory (`gateway.app.create_app`) served by gunicorn.

It reads telemetry through the store contract (`store.base.Store`) and never writes.
"""
