"""Peer addresses: parsing `ID@HOST:PORT`, and the network group an address belongs to.

A network group is the unit an attacker pays for: getting many IPv4 addresses inside one /16
(or IPv6 addresses inside one /32) is cheap, getting them in many groups is not. Slot eviction
and the address book's buckets are keyed on groups, as in Bitcoin Core, so one cheap range
cannot crowd everyone else out.
"""
from __future__ import annotations

import ipaddress

from consensus.crypto import parse_address

MAX_ADDR_CHARS = 300  # ID (about 42 chars) + "@" + a DNS name (253) + ":65535"
MAX_HOST_CHARS = 253


def split_addr(addr: str) -> tuple[str, int]:
    """"HOST:PORT" → (host, port); ValueError when it is not a dialable address."""
    if type(addr) is not str or len(addr) > MAX_ADDR_CHARS:
        raise ValueError("address is not a short string")
    host, sep, port = addr.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or len(host) > MAX_HOST_CHARS or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT")
    if any(c.isspace() or c in "@/" for c in host):
        raise ValueError(f"bad host in {addr!r}")
    return host, int(port)


def parse_peer(text: str) -> tuple[bytes, str]:
    """`ID@HOST:PORT` (ID is the node's sc1 address) → (id, "HOST:PORT")."""
    if type(text) is not str or len(text) > MAX_ADDR_CHARS:
        raise ValueError("bad peer: expected a short ID@HOST:PORT string")
    ident, sep, addr = text.strip().partition("@")
    if not sep or ":" not in addr:
        raise ValueError(f"bad peer {text!r}: expected ID@HOST:PORT")
    split_addr(addr)
    return parse_address(ident), addr


def netgroup(host: str) -> str:
    """The group a host is counted in: IPv4 /16, IPv6 /32, or the name itself for a DNS name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "name:" + host.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        a, b = ip.packed[:2]
        return f"v4:{a}.{b}"
    return "v6:" + ip.packed[:4].hex()


def addr_group(addr: str) -> str:
    return netgroup(split_addr(addr)[0])


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_local_port() -> int:
    """A port on 127.0.0.1 nobody listens on, for a node about to start (devnets, tests).

    Picked below the kernel's ephemeral range: a port from that range (what binding to port 0
    gives) is also what every outgoing connection takes, so between the pick and the node's
    bind a client could take it. Never the same port twice in one process."""
    import random
    import socket
    low = _ephemeral_low()
    first = 20000 if low > 21000 else 1024
    last = low - 1 if low > 21000 else 65535
    rng = random.Random()
    for _ in range(2000):
        port = rng.randint(first, last)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise OSError("no free port on 127.0.0.1")

