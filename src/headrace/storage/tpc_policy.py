"""Which addresses a third-party copy may reach.

A door that fetches (pull) or sends (push) on a user's behalf would otherwise reach whatever the door's network
reaches: a cloud's metadata service, the facility's internal web services. The policy is checked on the
addresses a remote's name resolves to, before the copy is accepted (403 with the reason) and again at every
connection (redirects included), and the connection is made to the address that was checked, so a name that
resolves differently the second time gains nothing.

Settings (each a comma-separated list of networks in CIDR notation, or single addresses):

  HEADRACE_TPC_DENY   never reached. Default: link-local (169.254.0.0/16, where cloud metadata services
                      answer, and fe80::/10), "this network" and unspecified (0.0.0.0/8, ::/128), multicast
                      (224.0.0.0/4, ff00::/8). A facility that keeps internal services on private networks adds
                      them (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 127.0.0.0/8, ::1/128, fc00::/7); an
                      empty value denies nothing.
  HEADRACE_TPC_ALLOW  when set, only these networks are reached (less what is denied). Default: any.

An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is judged as the IPv4 address it carries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENY = "169.254.0.0/16,fe80::/10,0.0.0.0/8,::/128,224.0.0.0/4,ff00::/8"


class TransferRefused(Exception):
    """No address of the remote is one third-party copies may reach."""


def _networks(name: str, raw: str) -> tuple[Network, ...]:
    out: list[Network] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"{name}: {item!r} is not a network (CIDR such as 10.0.0.0/8) nor an address") from exc
    return tuple(out)


def _address(text: str) -> Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # a scope id (fe80::1%eth0) names no other address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class TransferPolicy:
    deny: tuple[Network, ...]
    allow: tuple[Network, ...] | None = None  # None: any address not denied

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TransferPolicy:
        """The policy of HEADRACE_TPC_DENY / HEADRACE_TPC_ALLOW (ValueError naming the setting when malformed)."""
        deny = _networks("HEADRACE_TPC_DENY", env.get("HEADRACE_TPC_DENY", DEFAULT_DENY))
        raw_allow = env.get("HEADRACE_TPC_ALLOW", "").strip()
        allow = _networks("HEADRACE_TPC_ALLOW", raw_allow) if raw_allow else None
        return cls(deny=deny, allow=allow)

    def permits(self, text: str) -> bool:
        address = _address(text)
        if any(address in net for net in self.deny):
            return False
        return self.allow is None or any(address in net for net in self.allow)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of `host` this policy permits, in the resolver's order. OSError when the name does
        not resolve; TransferRefused, naming what it resolved to, when it permits none of them."""
        try:
            literal = _address(host.strip("[]"))
            found = [str(literal)]
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        permitted = [a for a in found if self.permits(a)]
        if not permitted:
            setting = "HEADRACE_TPC_ALLOW" if self.allow is not None else "HEADRACE_TPC_DENY"
            raise TransferRefused(
                f"{host} resolves to {', '.join(found)}, which third-party copies from this door may not reach "
                f"({setting})"
            )
        return permitted

    async def check_url(self, url: str) -> None:
        """TransferRefused if `url`'s host resolves only to addresses this policy does not permit (a name that
        does not resolve passes: the copy fails on it later, with the resolver's error)."""
        parts = urlsplit(url)
        secure = parts.scheme.lower() == "https"
        try:
            await self.addresses(parts.hostname or "", parts.port or (443 if secure else 80))
        except OSError:
            return
