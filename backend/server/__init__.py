"""The ZeroMQ backend server (`python -m backend serve`); the protocol itself is in shared/protocol.py.

app.py: the ROUTER loop, sessions and request handlers; executor.py: where jobs run (a worker process,
worker.py); results.py: the results
folder; meshfile.py: mesh arrays for the wire; security.py: bind policy and CURVE. docs/PROTOCOL.md.
"""
