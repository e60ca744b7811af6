"""The control plane: how an operator and the service manager talk to a running proxy.

    admin.py        the admin HTTP API (/status, /metrics, /healthz, reload, targets),
                    served by boundedhttp.py, a small HTTP/1.1 server with hard bounds
                    on what one client may cost (httpconn.py: one connection and the
                    worker lanes; httpmessages.py: what its handler sees and returns)
    admintoken.py   the bearer token the admin API asks for
    adminsocket.py  the admin API on a unix socket (what the CLI uses)
    handover.py     the control socket: a new process takes the listening sockets and
                    the steering from the running one (upgrade with no refused client)
    privileges.py   dropping root once ports are bound and BPF is loaded
    sdnotify.py     sd_notify(3): READY, RELOADING, STATUS, the fd store
    watchdog.py     notices a stuck main loop (for /healthz and the log)

The data plane (relay/, steering/) never imports from here; the orchestrator
(server.py) wires both together.
"""
