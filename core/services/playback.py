"""Playback accounting: every play is charged first, refunded if it cannot start, recorded."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.models import CreditTransaction, Sound
from core.services.credits import Action, CreditsService
from core.services.guilds import GuildService
from core.services.sounds import SoundService

log = logging.getLogger(__name__)


@dataclass
class PlayCharge:
    """What a play cost; `transaction` is None when the play was free."""

    user_id: int
    sound: Sound
    guild_id: int
    amount: int
    transaction: CreditTransaction | None
    balance_after: int | None


class PlaybackService:
    def __init__(self, credits: CreditsService, sounds: SoundService, guilds: GuildService) -> None:
        self._credits = credits
        self._sounds = sounds
        self._guilds = guilds

    async def charge(
        self, *, user_id: int, sound: Sound, guild_id: int, source: str = "play"
    ) -> PlayCharge:
        """Deduct the guild's play cost; raises InsufficientCredits and changes nothing."""
        cost = (await self._guilds.config(guild_id)).play_cost
        if cost <= 0:
            return PlayCharge(user_id, sound, guild_id, 0, None, None)
        row = await self._credits.deduct(
            user_id,
            cost,
            action=Action.PLAY,
            meta={
                "sound_id": sound.id,
                "sound": sound.name,
                "guild_id": guild_id,
                "source": source,
            },
        )
        return PlayCharge(user_id, sound, guild_id, cost, row, row.balance_after)

    async def refund(self, charge: PlayCharge, reason: str) -> None:
        if charge.transaction is None:
            return
        await self._credits.refund(
            charge.user_id, charge.amount, of_transaction=charge.transaction.id, reason=reason
        )
        log.info(
            "play refunded user=%s sound=%s reason=%s", charge.user_id, charge.sound.id, reason
        )

    async def played(self, charge: PlayCharge, *, channel_id: int | None) -> None:
        await self._sounds.record_play(
            charge.sound, user_id=charge.user_id, guild_id=charge.guild_id, channel_id=channel_id
        )
