"""The cluster: a fleet of proxies serving one config kept in etcd.

    etcd.py         the etcd client (v3 JSON gateway through etcd3gw, an optional
                    extra), URLs and TLS/auth settings
    source.py       the etcd config source: watch the key, apply revisions, keep a
                    local cache for starting while etcd is away (sources.py's contract)
    membership.py   each instance's record under a lease: what it serves (cluster status)
    options.py      an instance's cluster settings (id, cache, lease), for the CLI
    cli.py          `fastproxy cluster ...` and `fastproxy config push/get`

Nothing outside this package imports it at start: the orchestrator opens the etcd
source only when the config is an etcd:// URL.
"""
