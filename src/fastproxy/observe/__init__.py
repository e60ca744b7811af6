"""What an operator sees of a running proxy besides /status.

metrics.py    the Prometheus collectors behind GET /metrics
accesslog.py  one JSON line per connection, drained from the relay's rings
logsetup.py   the process log: text or JSON, journald priorities, UTC times
"""
