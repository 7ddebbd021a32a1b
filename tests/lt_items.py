#!/usr/bin/python3
"""BEP 44 items through libtorrent, for interop tests, driven by commands on stdin.

Runs one libtorrent session on loopback only (no LSD, UPnP, NAT-PMP; DHT bootstrapped only
from the addresses given; the loopback settings of shared/interop.md) and reads one command
a line on stdin:

  put-immutable VALUE            store the string VALUE (a bencoded string) as an immutable item
  get-immutable TARGET           fetch the immutable item under TARGET (40 hex)
  put-mutable KEYFILE SALT VALUE [PUBKEY]
                                 store the string VALUE as the mutable item of the key in
                                 KEYFILE (a `swarm dht keygen` file: the 32-byte ed25519 seed
                                 as 64 hex digits) under SALT; libtorrent picks the sequence
                                 number (one above the newest it finds); the public key
                                 comes from the `cryptography` package where it is installed
                                 (and must equal PUBKEY), else from PUBKEY
  get-mutable PUBKEY SALT        fetch the mutable item of PUBKEY (64 hex) under SALT: the
                                 first version libtorrent reports (it checks the signature
                                 first), often before its lookup ends (authoritative false)
  quit

(SALT "-" means the empty salt.) A command that fails (a put stored nowhere, a get that
found nothing) is repeated, at most every --retry-every seconds, until it succeeds or its
--op-timeout passes; then it prints one JSON object on stdout:

  {"event": "listening", "port": P, "bootstrapped": B, ...}
                                                    once, after the DHT's first bootstrap
  {"event": "put", "target": HEX, "num_success": N, "seq": S, "public_key": HEX, ...}
  {"event": "immutable", "target": HEX, "bencoded": HEX, "message": M}
                                                    (bencoded: null for a value that is not
                                                    a string: the binding cannot convert it)
  {"event": "mutable", "public_key": HEX, "salt": S, "seq": N, "bencoded": HEX,
   "signature": HEX, "authoritative": B}            the first alert that carries the item
  {"event": "error", "message": M}                  the command failed (the process goes on)

Exits when stdin closes, on quit, or when --timeout passes.

libtorrent 2.0.8's binding, as observed: an item alert's `item` is a dict ({"key", "value",
...}, the value decoded, and only string values convert); `salt` is a str, keys and
signatures bytes; a mutable put's dht_put_alert has an all-zero `target` and the new `seq`;
a get or put issued before the DHT has started is dropped without any alert.
"""

import argparse
import hashlib
import json
import queue
import sys
import threading
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

import libtorrent as lt


def emit(**obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def make_session(args):
    listen = args.listen if ":" in args.listen else args.listen + ":0"
    settings = {
        "listen_interfaces": listen,
        "enable_dht": True,
        "dht_bootstrap_nodes": ",".join(args.bootstrap),
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_restrict_search_ips": False,
        "dht_restrict_routing_ips": False,
        "dht_block_ratelimit": 1000000,
        "dht_block_timeout": 1,
        "alert_mask": lt.alert.category_t.dht_notification | lt.alert.category_t.error_notification,
        "user_agent": "lt_items interop",
    }
    return lt.session(settings)


def expanded_secret(seed):
    """The 64-byte ed25519 secret libtorrent signs with: SHA-512 of the seed, its first half
    clamped (RFC 8032 5.1.5), the second half as is."""
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def public_key(seed):
    """The public key of the seed, from the `cryptography` package when it is there (a check
    independent of swarm's); None otherwise."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        return None
    k = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return k.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def read_seed(path):
    with open(path) as f:
        text = f.read().strip()
    seed = bytes.fromhex(text)
    if len(seed) != 32:
        raise ValueError("%s: not a 32-byte seed" % path)
    return seed


def salt_arg(s):
    return b"" if s == "-" else s.encode()


RETRY = object()


def value_of(item):
    """The value in an item alert's `item`: libtorrent 2.0.8's binding gives a dict
    ({"key", "value", ...} with the value decoded), older ones the value itself; None when
    the lookup found nothing."""
    if isinstance(item, dict):
        if "value" not in item:
            return None
        item = item["value"]
    if item is None or item == {} or item == b"" or item == "":
        return None
    return item


def as_bytes(s):
    """The binding returns some std::string fields as str (salt), others as bytes."""
    return s.encode() if isinstance(s, str) else bytes(s)


class Items:
    def __init__(self, ses, op_timeout, retry_every):
        self.ses = ses
        self.op_timeout = op_timeout
        self.retry_every = retry_every

    def run(self, start, match):
        """Calls start(), then again after each failed attempt (at most every retry_every
        seconds), until match(alert) returns an event dict, or the op timeout passes.
        match returns RETRY for an alert that ends a failed attempt, None for others."""
        deadline = time.monotonic() + self.op_timeout
        started = time.monotonic()
        start()
        again = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            if again is not None and now >= again:
                again = None
                started = now
                start()
            self.ses.wait_for_alert(100)
            for a in self.ses.pop_alerts():
                ev = match(a)
                if ev is RETRY:
                    if again is None:
                        again = max(now, started + self.retry_every)
                elif ev is not None:
                    emit(**ev)
                    return
        emit(event="error", message="no result within %ss" % self.op_timeout)

    def put_immutable(self, value):
        target = str(lt.sha1_hash(hashlib.sha1(b"%d:%s" % (len(value.encode()), value.encode())).digest()))

        def start():
            t = str(self.ses.dht_put_immutable_item(value.encode()))
            if t != target:
                raise ValueError("libtorrent's target %s is not sha1(bencoding) %s" % (t, target))

        def match(a):
            if isinstance(a, lt.dht_put_alert) and str(a.target) == target:
                if a.num_success == 0:
                    return RETRY
                return dict(event="put", target=target, num_success=a.num_success, seq=a.seq,
                            public_key="")
            return None

        self.run(start, match)

    def get_immutable(self, target_hex):
        target = lt.sha1_hash(bytes.fromhex(target_hex))

        def start():
            self.ses.dht_get_immutable_item(target)

        def match(a):
            if isinstance(a, lt.dht_immutable_item_alert) and str(a.target) == target_hex:
                try:
                    value = value_of(a.item)
                except RuntimeError:
                    # The 2.0.8 binding converts only string items ("invalid type requested
                    # from entry"); libtorrent found the item (its hash checked), and the
                    # alert's message shows the value.
                    return dict(event="immutable", target=str(a.target), bencoded=None,
                                message=a.message())
                if value is None:
                    return RETRY
                return dict(event="immutable", target=str(a.target), bencoded=lt.bencode(value).hex(),
                            message=a.message())
            return None

        self.run(start, match)

    def put_mutable(self, keyfile, salt, value, given_pk=None):
        seed = read_seed(keyfile)
        sk = expanded_secret(seed)
        pk = public_key(seed)
        if pk is None and given_pk is None:
            emit(event="error", message="put-mutable needs PUBKEY or the cryptography package")
            return
        if pk is not None and given_pk is not None and pk != given_pk:
            emit(event="error", message="the seed's public key is %s, not %s" % (pk.hex(), given_pk.hex()))
            return
        checked = pk is not None
        pk = pk or given_pk

        def start():
            self.ses.dht_put_mutable_item(sk, pk, value.encode(), salt)

        def match(a):
            if isinstance(a, lt.dht_put_alert) and as_bytes(a.public_key) == pk and as_bytes(a.salt) == salt:
                if a.num_success == 0:
                    return RETRY
                return dict(event="put", target=str(a.target), num_success=a.num_success, seq=a.seq,
                            public_key=pk.hex(), public_key_checked=checked)
            return None

        self.run(start, match)

    def get_mutable(self, pk_hex, salt):
        pk = bytes.fromhex(pk_hex)

        def start():
            self.ses.dht_get_mutable_item(pk, salt)

        def match(a):
            if isinstance(a, lt.dht_mutable_item_alert) and as_bytes(a.key) == pk and as_bytes(a.salt) == salt:
                value = value_of(a.item)
                if value is None:
                    return RETRY if a.authoritative else None
                return dict(event="mutable", public_key=pk_hex, salt=as_bytes(a.salt).decode(), seq=a.seq,
                            bencoded=lt.bencode(value).hex(), signature=as_bytes(a.signature).hex(),
                            authoritative=a.authoritative)
            return None

        self.run(start, match)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, help="IP or IP:PORT on 127.0.0.0/8")
    p.add_argument("--bootstrap", action="append", default=[], help="DHT bootstrap HOST:PORT (repeatable)")
    p.add_argument("--timeout", type=float, default=120, help="exit after this many seconds")
    p.add_argument("--op-timeout", type=float, default=40, help="give up on one command after this long")
    p.add_argument("--retry-every", type=float, default=5, help="repeat a get or put this often")
    args = p.parse_args()

    deadline = time.monotonic() + args.timeout
    ses = make_session(args)
    # A get or put before the DHT runs is dropped without an alert: wait for the DHT's
    # first bootstrap (through the --bootstrap nodes) first.
    bootstrapped = False
    limit = time.monotonic() + min(20.0, args.timeout)
    while not bootstrapped and time.monotonic() < limit:
        ses.wait_for_alert(100)
        bootstrapped = any(isinstance(a, lt.dht_bootstrap_alert) for a in ses.pop_alerts())
    emit(event="listening", port=ses.listen_port(), dht_running=ses.is_dht_running(),
         bootstrapped=bootstrapped, dht_nodes=ses.status().dht_nodes)
    commands = queue.Queue()

    def reader():
        for line in sys.stdin:
            commands.put(line.rstrip("\n"))
        commands.put(None)

    threading.Thread(target=reader, daemon=True).start()
    items = Items(ses, args.op_timeout, args.retry_every)
    while time.monotonic() < deadline:
        try:
            line = commands.get(timeout=0.1)
        except queue.Empty:
            ses.pop_alerts()
            continue
        if line is None or line == "quit":
            return 0
        words = line.split(" ")
        try:
            if words[0] == "put-immutable" and len(words) == 2:
                items.put_immutable(words[1])
            elif words[0] == "get-immutable" and len(words) == 2:
                items.get_immutable(words[1])
            elif words[0] == "put-mutable" and len(words) in (4, 5):
                pk = bytes.fromhex(words[4]) if len(words) == 5 else None
                items.put_mutable(words[1], salt_arg(words[2]), words[3], pk)
            elif words[0] == "get-mutable" and len(words) == 3:
                items.get_mutable(words[1], salt_arg(words[2]))
            else:
                emit(event="error", message="bad command %r" % line)
        except Exception as e:  # reported, and the next command still runs
            emit(event="error", message="%s: %s" % (type(e).__name__, e))
    emit(event="error", message="timeout after %ss" % args.timeout)
    return 1


if __name__ == "__main__":
    sys.exit(main())
