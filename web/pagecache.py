"""A small cache of serialized ledger pages that can no longer change.

A page reached through a cursor holds only rows older than the cursor. Rows are never edited or
deleted, and a user's new rows always get higher ids (balance changes for one user are
serialized by a lock on the user's row), so such a page is immutable: it is served from memory
with an ETag (and answers If-None-Match with 304). The newest page (no cursor) is never cached.
Entries also expire after `ttl` seconds, which bounds the effect of manual database surgery.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedPage:
    body: bytes
    etag: str
    expires: float


class PageCache:
    def __init__(
        self,
        *,
        max_entries: int = 2048,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._pages: OrderedDict[Hashable, CachedPage] = OrderedDict()

    def get(self, key: Hashable) -> CachedPage | None:
        page = self._pages.get(key)
        if page is None:
            return None
        if page.expires <= self._clock():
            del self._pages[key]
            return None
        self._pages.move_to_end(key)
        return page

    def put(self, key: Hashable, body: bytes) -> CachedPage:
        page = CachedPage(body, etag_for(body), self._clock() + self.ttl)
        self._pages[key] = page
        self._pages.move_to_end(key)
        while len(self._pages) > self.max_entries:
            self._pages.popitem(last=False)
        return page

    def __len__(self) -> int:
        return len(self._pages)


def etag_for(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
