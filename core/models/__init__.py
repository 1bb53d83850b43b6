"""SQLModel tables. Import from here so every table is registered on `SQLModel.metadata`."""

from core.models.common import utcnow
from core.models.credits import CreditTransaction
from core.models.extraction import Extraction, ExtractionStatus
from core.models.guild import EntranceSound, Guild
from core.models.playlist import Playlist, PlaylistSound
from core.models.sound import Sound, SoundPlayed, SoundTag, SoundType
from core.models.user import ApiToken, Plan, Role, User, UserOAuth

__all__ = [
    "ApiToken",
    "CreditTransaction",
    "EntranceSound",
    "Extraction",
    "ExtractionStatus",
    "Guild",
    "Plan",
    "Playlist",
    "PlaylistSound",
    "Role",
    "Sound",
    "SoundPlayed",
    "SoundTag",
    "SoundType",
    "User",
    "UserOAuth",
    "utcnow",
]
