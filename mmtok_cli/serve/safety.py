"""What the server lets a request make it do: which images it fetches or reads, and who may ask.

Images go through `io`'s loaders, so a request's image has the limits of a `mmtok batch` item (one download
deadline, a byte cap, at most 5 redirects, the decoded-size limit checked before decoding), plus the server's
policy: no loopback, private or link-local hosts unless --allow-private-urls (checked on every redirect hop, on
the address actually connected to), and file:// only inside --allowed-local-media-path.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from PIL import Image

from ..errors import MmtokError, RefusedSource
from ..io import MAX_DOWNLOAD_BYTES, URL_TIMEOUT_S, decode_image, fetch_image, local_image


@dataclass
class MediaPolicy:
    allow_private: bool = False
    local_root: str | None = None
    """The folder file:// URLs may read from (already resolved); None refuses them."""
    timeout: float = URL_TIMEOUT_S

    def load(self, url: str) -> Image.Image:
        """The image at `url` (data:, http(s): or file:), decoded; RefusedSource where the policy says no,
        MmtokError where it cannot be fetched or decoded."""
        scheme = url.split(":", 1)[0].lower()
        if scheme == "data":
            header, _, payload = url.partition(",")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise MmtokError("the data URL's image is not valid base64") from None
            if len(data) > MAX_DOWNLOAD_BYTES:
                raise MmtokError(f"the data URL's image is over the {MAX_DOWNLOAD_BYTES / 1e6:g} MB image limit")
            return decode_image(data, f"the {header.removeprefix('data:')} data URL image")
        if scheme in ("http", "https"):
            return fetch_image(url, timeout=self.timeout, allow_private=self.allow_private)
        if scheme == "file":
            if self.local_root is None:
                raise RefusedSource("file:// image URLs are refused: the server was started without "
                                    "--allowed-local-media-path")
            parts = urlparse(url)
            if parts.netloc not in ("", "localhost"):
                raise RefusedSource(f"{url} names another host; file:// URLs read this machine's files only")
            return local_image(unquote(parts.path), self.local_root)
        raise RefusedSource(f"image URLs must be data:, http(s): or file: URLs, not {scheme}:")


def authorized(header: str | None, api_key: str | None) -> bool:
    """Whether an Authorization header carries the server's key (any header does when there is no key)."""
    if api_key is None:
        return True
    scheme, _, token = (header or "").partition(" ")
    # Constant time: the comparison must not tell an attacker how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
