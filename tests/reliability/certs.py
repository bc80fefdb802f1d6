"""A throw-away certificate authority (openssl CLI): a server certificate for 127.0.0.1 and
client certificates, for TLS tests of PostgreSQL and of the metrics endpoint."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    directory: Path
    ca: Pair

    @classmethod
    def create(cls, directory: Path) -> Authority:
        directory.mkdir(parents=True, exist_ok=True)
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=pipectl test CA", "-keyout", "ca.key", "-out", "ca.crt",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory,
        )  # fmt: skip
        return cls(directory, Pair(directory / "ca.crt", directory / "ca.key"))

    def issue(self, name: str, common_name: str, server: bool = False) -> Pair:
        """A certificate signed by this CA; server ones are valid for 127.0.0.1/localhost."""
        d = self.directory
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={common_name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr",
            cwd=d,
        )  # fmt: skip
        extensions = d / f"{name}.ext"
        usage = "serverAuth" if server else "clientAuth"
        lines = [f"extendedKeyUsage={usage}"]
        if server:
            lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
        extensions.write_text("\n".join(lines) + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", extensions.name,
            "-out", f"{name}.crt",
            cwd=d,
        )  # fmt: skip
        (d / f"{name}.key").chmod(0o600)
        return Pair(d / f"{name}.crt", d / f"{name}.key")
