"""Who is asking: a user's identity (uid, gids) and whether Unix permission checks apply."""

from __future__ import annotations

from dataclasses import dataclass

R, W, X = 4, 2, 1


@dataclass(frozen=True)
class Subject:
    username: str
    uid: int
    gids: tuple[int, ...]
    admin: bool = False

    @property
    def gid(self) -> int:
        return self.gids[0] if self.gids else self.uid

    def may(self, want: int, *, mode: int, uid: int, gid: int) -> bool:
        """Unix-style check of `want` (R/W/X bits) against an object's owner, group and mode."""
        if self.admin:
            return True
        if self.uid == uid:
            bits = (mode >> 6) & 7
        elif gid in self.gids:
            bits = (mode >> 3) & 7
        else:
            bits = mode & 7
        return bits & want == want


ROOT = Subject("admin", 0, (0,), admin=True)
ANONYMOUS = Subject("anonymous", 65534, (65534,))
