"""What the server lets a request make it do: which images and videos it fetches or reads, and who may ask.

Media go through `io`'s loaders, so a request's image or video has the limits of a `mmtok batch` item (one download
deadline, a byte cap: an image's or a video's, at most 5 redirects, the decoded-size limit checked before
decoding), plus the server's policy: no loopback, private or link-local hosts unless --allow-private-urls (checked
on every redirect hop, on the address actually connected to), and file:// only inside --allowed-local-media-path.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import MmtokError, RefusedSource
from ..io import MAX_DOWNLOAD_BYTES, URL_TIMEOUT_S, decode_image, fetch_bytes, local_file
from ..video import MAX_DOWNLOAD_BYTES as MAX_VIDEO_BYTES


@dataclass
class MediaPolicy:
    allow_private: bool = False
    local_root: str | None = None
    """The folder file:// URLs may read from (already resolved); None refuses them."""
    timeout: float = URL_TIMEOUT_S

    def load(self, url: str, kind: str = "image", *, sampling: Any = None, rule: Any = None) -> Any:
        """The image (`kind` "image") or video ("video": its frames `sampling` picks, `rule` the family's default;
        see `video.decode`) at `url` (data:, http(s): or file:), decoded; RefusedSource where the policy says no,
        MmtokError where it cannot be fetched or decoded."""
        limit = MAX_DOWNLOAD_BYTES if kind == "image" else MAX_VIDEO_BYTES
        scheme = url.split(":", 1)[0].lower()
        source: bytes | Path
        if scheme == "data":
            header, _, payload = url.partition(",")
            try:
                source = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise MmtokError(f"the data URL's {kind} is not valid base64") from None
            if len(source) > limit:
                raise MmtokError(f"the data URL's {kind} is over the {limit / 1e6:g} MB {kind} limit")
            name = f"the {header.removeprefix('data:')} data URL {kind}"
        elif scheme in ("http", "https"):
            source, name = fetch_bytes(url, self.timeout, limit, allow_private=self.allow_private), url
        elif scheme == "file":
            if self.local_root is None:
                raise RefusedSource("file:// URLs are refused: the server was started without "
                                    "--allowed-local-media-path")
            parts = urlparse(url)
            if parts.netloc not in ("", "localhost"):
                raise RefusedSource(f"{url} names another host; file:// URLs read this machine's files only")
            name = unquote(parts.path)
            source = local_file(name, self.local_root, max_bytes=limit, what=kind)
        else:
            raise RefusedSource(f"media URLs must be data:, http(s): or file: URLs, not {scheme}:")
        if kind == "image":
            return decode_image(source, name)
        from ..video import decode

        return decode(io.BytesIO(source) if isinstance(source, bytes) else source, sampling, default=rule, name=name)


def authorized(header: str | None, api_key: str | None) -> bool:
    """Whether an Authorization header carries the server's key (any header does when there is no key)."""
    if api_key is None:
        return True
    scheme, _, token = (header or "").partition(" ")
    # Constant time: the comparison must not tell an attacker how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
