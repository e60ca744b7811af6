"""The targets: where each client goes and whether it may.

routing.py   the routes published to the relay: ports to apps, apps to targets,
             weights and operator state (drain, disable, weight)
health.py    active health checks, and the up/down state they give each target
outlier.py   passive ejection of targets the relay saw fail (connect failures, resets)
resolver.py  targets named by host name: resolved again in the background
state.py     operator state (drain, disable, weight) kept across restarts
report.py    the apps and targets part of /status
"""
