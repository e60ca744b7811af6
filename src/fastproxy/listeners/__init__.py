"""Listeners: the sockets clients connect to, in either steering mode, and how they
survive reloads, upgrades and restarts.

    contract.py     what a mode's listeners must do (prepare, commit, rollback, adopt,
                    take over), so that a reload is all-or-nothing in both modes
    sockets.py      opening one listening socket, and the errors it may give
    ports.py        steering "ports": one socket per configured port
    steered.py      steering "bpf": one socket for every port, fed by steering/
    fdstore.py      systemd's fd store and socket activation: sockets that outlive
                    the process

The relay (relay/) accepts on what these open; the orchestrator (server.py) picks the
mode.
"""
