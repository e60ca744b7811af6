"""The documentation keeps up with the code: every key the config loader accepts is
described in docs/configuration.md, and the README links the operator's documents."""

from __future__ import annotations

import re

from fastproxy import config
from proxyproc import ROOT

DOCS = ROOT / "docs"


def test_every_config_key_is_in_configuration_md() -> None:
    text = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", text, re.MULTILINE))
    accepted = {
        name: set(keys)
        for name, keys in vars(config).items()
        if name.endswith("_KEYS") and isinstance(keys, tuple)
    }
    assert {"TOP_KEYS", "APP_KEYS", "HEALTH_KEYS", "TARGET_KEYS"} <= accepted.keys()
    missing = {name: sorted(keys - documented) for name, keys in accepted.items()}
    assert not any(missing.values()), missing


def test_the_readme_links_the_operator_documents() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in ("configuration.md", "operations.md", "security.md", "cluster.md"):
        assert (DOCS / doc).is_file(), doc
        assert f"docs/{doc}" in readme, doc
    for doc in DOCS.glob("*.md"):
        assert "SPEC" not in doc.read_text(), f"{doc.name} cites a SPEC the repository lacks"
