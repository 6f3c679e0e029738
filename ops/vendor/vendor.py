"""Vendored browser libraries: fetched from the npm registry at pinned versions, checked against the
registry's integrity hash, and unpacked into the package's static folder with their licenses.

    python ops/vendor/vendor.py            # (re)fetch the pinned versions (`make vendor`)
    python ops/vendor/vendor.py --latest   # move the pins to the registry's latest and fetch them

The dashboard and the API docs then need no network: nothing is loaded from a CDN. The pins live in
``ops/vendor/pins.json``; what was unpacked, with its size and sha256, in the ``VENDORED.json`` next
to the files, which a test checks against the files themselves.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PINS = HERE / "pins.json"
OUT = HERE.parents[1] / "agents" / "publish" / "static" / "vendor"
REGISTRY = "https://registry.npmjs.org"


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (a fixed https registry)
        return bytes(r.read())


def latest(package: str) -> dict[str, str]:
    meta = json.loads(fetch(f"{REGISTRY}/{package}/latest"))
    return {"version": meta["version"], "integrity": meta["dist"]["integrity"], "license": meta["license"]}


def check_integrity(data: bytes, integrity: str) -> None:
    algo, _, want = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != want:
        raise SystemExit(f"integrity mismatch: expected {integrity}, got {algo}-{got}")


def unpack(name: str, pin: dict[str, object]) -> list[dict[str, object]]:
    package, version = str(pin["package"]), str(pin["version"])
    tarball = f"{REGISTRY}/{package}/-/{package.rsplit('/', 1)[-1]}-{version}.tgz"
    data = fetch(tarball)
    check_integrity(data, str(pin["integrity"]))
    dest = OUT / name
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in pin["files"]:  # type: ignore[attr-defined]
            extracted = tar.extractfile(f"package/{member}")
            if extracted is None:
                raise SystemExit(f"{package}@{version} has no {member}")
            body = extracted.read()
            target = dest / Path(member).name
            target.write_bytes(body)
            files.append(
                {"file": f"{name}/{target.name}", "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            )
    print(f"{package}@{version} -> {dest}")
    return [{"package": package, "version": version, "license": pin["license"], "tarball": tarball, "files": files}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latest", action="store_true", help="move the pins to the latest versions first")
    args = parser.parse_args()
    pins = json.loads(PINS.read_text())
    if args.latest:
        for pin in pins.values():
            pin.update(latest(pin["package"]))
        PINS.write_text(json.dumps(pins, indent=2) + "\n")
    manifest = [entry for name, pin in pins.items() for entry in unpack(name, pin)]
    (OUT / "VENDORED.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
