"""Where sound files live. Local disk by default; the interface leaves room for an object store.

Every write lands in a temporary file next to its target and is renamed into place, so a crash
never leaves a half-written file that the database points to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Protocol

from core.models import SoundType

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
AUDIO_EXTENSIONS = frozenset({".mp3", ".wav", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".webm"})
_SLUG_RE = re.compile(r"[^a-z0-9]+")


def slugify(name: str, *, max_length: int = 60) -> str:
    """A file-name-safe form of a user-given name: ASCII letters, digits and dashes only."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _SLUG_RE.sub("-", ascii_name.lower()).strip("-")[:max_length].strip("-")
    return slug or "sound"


def guild_folder(guild_id: int | None) -> str:
    return f"g{guild_id}" if guild_id is not None else "global"


class SoundStorage(Protocol):
    """The operations the library needs from a place that keeps files.

    Every process (bot shards, web processes, workers) must see the same files: with several
    machines, SOUNDS_DIR is a shared volume. An object store fits behind this interface by
    keeping a local cache folder for `original_path`/`normalized_path` (ffmpeg and the bot
    read local files) and uploading in `store_original` and after normalizing.
    """

    root: Path
    originals: Path
    normalized: Path
    temp: Path
    thumbnails: Path

    def ensure_layout(self) -> None: ...

    def clean_temp(self, *, older_than_seconds: float = 0) -> int: ...

    def original_path(self, sound_type: SoundType, relname: str) -> Path: ...

    def normalized_path(self, sound_type: SoundType, relname: str) -> Path: ...

    def store_original(
        self, src: Path, *, sound_type: SoundType, guild_id: int | None, name: str, digest: str
    ) -> str: ...

    def normalized_name_for(self, original_relname: str, extension: str) -> str: ...

    def remove(self, path: Path) -> None: ...


class LocalStorage:
    """Files under SOUNDS_DIR in the layout our users know (originals/, normalized/, temp/)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.originals = root / "originals"
        self.normalized = root / "normalized"
        self.temp = root / "temp"
        self.thumbnails = self.originals / "extracted" / "thumbnails"

    def ensure_layout(self) -> None:
        for kind in SoundType:
            (self.originals / kind.folder).mkdir(parents=True, exist_ok=True)
            (self.normalized / kind.folder).mkdir(parents=True, exist_ok=True)
        self.temp.mkdir(parents=True, exist_ok=True)
        self.thumbnails.mkdir(parents=True, exist_ok=True)

    def clean_temp(self, *, older_than_seconds: float = 0) -> int:
        """Remove temporaries that a crashed write or job left behind; returns how many."""
        removed = 0
        cutoff = time.time() - older_than_seconds
        if not self.root.exists():
            return 0
        candidates = [p for p in self.root.rglob(f"{TEMP_PREFIX}*") if p.is_file()]
        if self.temp.exists():
            candidates += [p for p in self.temp.rglob("*") if p.is_file()]
        for path in candidates:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
        if removed:
            log.info("removed stale temporary files count=%s", removed)
        return removed

    def original_path(self, sound_type: SoundType, relname: str) -> Path:
        return self._inside(self.originals / sound_type.folder, relname)

    def normalized_path(self, sound_type: SoundType, relname: str) -> Path:
        return self._inside(self.normalized / sound_type.folder, relname)

    @staticmethod
    def _inside(base: Path, relname: str) -> Path:
        path = (base / relname).resolve()
        if not path.is_relative_to(base.resolve()):
            raise ValueError(f"path escapes the sound folder: {relname!r}")
        return path

    def store_original(
        self, src: Path, *, sound_type: SoundType, guild_id: int | None, name: str, digest: str
    ) -> str:
        """Copy `src` into the library; the name carries the guild and part of the hash, so two
        guilds' sounds of the same name never clobber each other."""
        extension = src.suffix.lower() if src.suffix.lower() in AUDIO_EXTENSIONS else ".bin"
        relname = f"{guild_folder(guild_id)}/{slugify(name)}-{digest[:12]}{extension}"
        target = self.original_path(sound_type, relname)
        atomic_copy(src, target)
        return relname

    def normalized_name_for(self, original_relname: str, extension: str) -> str:
        return str(Path(original_relname).with_suffix(extension))

    def remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def atomic_copy(src: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as source:
            shutil.copyfileobj(source, out, length=1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def temp_path_beside(target: Path, suffix: str = "") -> Path:
    """A fresh temporary name in the target's folder (same file system, so rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(tmp_name)
