"""A throwaway PKI for the TLS tests, made with the openssl command: a CA, and
certificates it signs for given names (ECDSA P-256 or RSA 2048), expired ones too."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _new_key(path: Path, kind: str) -> list[str]:
    if kind == "rsa":
        return ["-newkey", "rsa:2048", "-nodes", "-keyout", str(path)]
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(path)]  # fmt: skip


class Pki:
    """A CA in `where`; `issue` signs certificates with it."""

    def __init__(self, where: Path, name: str = "fastproxy test CA") -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.where = where
        self.ca = str(where / "ca.pem")
        self.ca_key = str(where / "ca.key")
        _openssl(
            "req", "-x509", *_new_key(where / "ca.key", "ec"), "-out", self.ca,
            "-days", "30", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip

    def issue(
        self, stem: str, names: list[str], *, kind: str = "ec", days: int = 30
    ) -> tuple[str, str]:
        """(cert, key) files for `names` (the first is the CN), valid for `days` (<= 0:
        already expired)."""
        key, csr = self.where / f"{stem}.key", self.where / f"{stem}.csr"
        cert, ext = self.where / f"{stem}.pem", self.where / f"{stem}.ext"
        ext.write_text(
            "subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        _openssl("req", "-new", *_new_key(key, kind), "-out", str(csr), "-subj", f"/CN={names[0]}")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", self.ca, "-CAkey", self.ca_key,
            "-CAcreateserial", "-out", str(cert), "-days", str(days if days > 0 else -1),
            "-extfile", str(ext),
        )  # fmt: skip
        return str(cert), str(key)
