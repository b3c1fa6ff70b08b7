"""The ZeroMQ backend server (`python -m backend serve`); the protocol itself is in shared/protocol.py.

app.py: the ROUTER loop, sessions and request handlers; security.py: bind policy and CURVE. Where and how jobs
run (the queue, executors, workers, the results folder) is backend/jobs/. docs/PROTOCOL.md.
"""
