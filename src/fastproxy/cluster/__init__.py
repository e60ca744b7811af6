"""The cluster: a fleet of proxies serving one config kept in etcd.

    etcd.py         the etcd client (v3 JSON gateway through etcd3gw, an optional
                    extra) and URLs
    source.py       the etcd config source: watch the key, apply revisions, keep a
                    local cache for starting while etcd is away (sources.py's contract)
    membership.py   each instance's record under a lease: what it serves (cluster status)
    options.py      an instance's cluster settings (id, cache, lease) and how it
                    reaches etcd (TLS/auth settings), for the CLI
    flags.py        the --etcd-* command line options
    cli.py          `fastproxy cluster ...` and `fastproxy config push/get`

`fastproxy serve` of a file imports options.py and flags.py only: the orchestrator
opens the etcd source (and its client) only when the config is an etcd:// URL, and the
CLI imports cli.py only for its commands (tests/test_startup_imports.py holds to it).
"""
