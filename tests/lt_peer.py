#!/usr/bin/python3
"""A libtorrent peer for interop tests, driven from the command line.

Runs one libtorrent session on loopback only (no LSD, UPnP, NAT-PMP; DHT bootstrapped only
from the addresses given) and does one job: seed a torrent, fetch a magnet or .torrent, or
look up / announce an info-hash on the DHT. It prints one JSON object per line on stdout:

  {"event": "listening", "port": P, "dht_port": P}
  {"event": "status", ...}                  progress, every --status-interval seconds
  {"event": "dht_peers", "info_hash": H, "peers": ["ip:port", ...]}
  {"event": "done", ...}                    the job finished; exit code 0 (for get, with
                                            "sources": the "ip:port" of every peer it got
                                            payload from, as it connected to them, and
                                            "sources_in": those that connected to it)
  {"event": "error", "message": M}          failure; exit code 1

Exits with 1 when --timeout passes first. Every loop is bounded by that deadline.
Usage examples (see --help):
  lt_peer.py --listen 127.0.0.5 --bootstrap 127.0.0.2:6881 seed --torrent X.torrent --save DIR
  lt_peer.py --listen 127.0.0.6 --bootstrap 127.0.0.2:6881 get --magnet URI --save DIR
  lt_peer.py --listen 127.0.0.7 --bootstrap 127.0.0.2:6881 dht-get-peers --info-hash HEX
"""

import argparse
import json
import os
import sys
import tempfile
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
        "enable_dht": not args.no_dht,
        "dht_bootstrap_nodes": ",".join(args.bootstrap),
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_restrict_search_ips": False,
        "dht_restrict_routing_ips": False,
        "dht_block_ratelimit": 1000000,
        "dht_block_timeout": 1,
        "allow_multiple_connections_per_ip": True,
        "min_reconnect_time": 1,
        "max_failcount": 100,
        "alert_mask": lt.alert.category_t.all_categories,
        "user_agent": "lt_peer interop",
    }
    if args.upload_limit:
        settings["upload_rate_limit"] = args.upload_limit
    if args.utp_only:
        # Peers only over uTP (BEP 29), the way many NATed clients are reachable.
        settings["enable_outgoing_tcp"] = False
        settings["enable_incoming_tcp"] = False
        settings["enable_outgoing_utp"] = True
        settings["enable_incoming_utp"] = True
    if args.encryption == "forced":
        # Only MSE/PE connections, RC4 after the handshake, both ways.
        settings["out_enc_policy"] = int(lt.enc_policy.forced)
        settings["in_enc_policy"] = int(lt.enc_policy.forced)
        settings["allowed_enc_level"] = int(lt.enc_level.rc4)
    ses = lt.session(settings)
    return ses


def dht_announce(ses, target, args, state):
    """Announces `target` on the DHT; returns the announced port.

    The Python binding of libtorrent 2.0.8 cannot call session.dht_announce (its flags
    type is not exported), so on that error this falls back to adding a metadata-less
    torrent for the info-hash and forcing its DHT announce: the port is then the listen
    port."""
    if state.get("handle") is None and state.get("via") != "torrent":
        try:
            ses.dht_announce(target, args.port, 0)
            state["via"] = "dht_announce"
            return args.port
        except TypeError:
            state["via"] = "torrent"
    if state.get("handle") is None:
        atp = lt.parse_magnet_uri("magnet:?xt=urn:btih:" + args.info_hash)
        atp.save_path = tempfile.mkdtemp(prefix="lt_peer_")
        state["handle"] = ses.add_torrent(atp)
    state["handle"].force_dht_announce()
    return ses.listen_port()


def peer_arg(s):
    host, _, port = s.rpartition(":")
    return (host.strip("[]"), int(port))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, help="IP or IP:PORT on 127.0.0.0/8")
    p.add_argument("--bootstrap", action="append", default=[], help="DHT bootstrap HOST:PORT (repeatable)")
    p.add_argument("--no-dht", action="store_true")
    p.add_argument("--peer", action="append", default=[], help="connect to this peer directly (repeatable)")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--status-interval", type=float, default=1.0)
    p.add_argument("--upload-limit", type=int, default=0)
    p.add_argument("--encryption", choices=["default", "forced"], default="default",
                   help="forced: accept and make only encrypted (MSE/PE, RC4) connections")
    p.add_argument("--utp-only", action="store_true", help="peer connections over uTP only (no TCP)")
    p.add_argument("--announce-every", type=float, default=2.0, help="force_dht_announce interval (s)")
    sub = p.add_subparsers(dest="job", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--torrent", required=True)
    s.add_argument("--save", required=True)
    s.add_argument("--linger", type=float, default=0, help="keep seeding this long after ready (0: until timeout)")
    g = sub.add_parser("get")
    g.add_argument("--magnet")
    g.add_argument("--torrent")
    g.add_argument("--save", required=True)
    d = sub.add_parser("dht-get-peers")
    d.add_argument("--info-hash", required=True)
    d.add_argument("--want", type=int, default=1, help="stop once this many peers are known")
    a = sub.add_parser("dht-announce")
    a.add_argument("--info-hash", required=True)
    a.add_argument("--port", type=int, default=0)
    a.add_argument("--linger", type=float, default=0)
    args = p.parse_args()

    deadline = time.monotonic() + args.timeout
    ses = make_session(args)
    emit(event="listening", port=ses.listen_port(), dht_port=ses.listen_port())

    handle = None
    if args.job in ("seed", "get"):
        atp = lt.add_torrent_params()
        if getattr(args, "magnet", None):
            atp = lt.parse_magnet_uri(args.magnet)
        elif args.torrent:
            atp.ti = lt.torrent_info(args.torrent)
        else:
            emit(event="error", message="get needs --magnet or --torrent")
            return 1
        atp.save_path = args.save
        if args.job == "seed":
            atp.flags |= lt.torrent_flags.seed_mode if hasattr(lt.torrent_flags, "seed_mode") else 0
        handle = ses.add_torrent(atp)
        for peer in args.peer:
            handle.connect_peer(peer_arg(peer))

    last_status = 0.0
    last_announce = 0.0
    ready_since = None
    found = set()
    incoming = set()  # "ip:port" of the peers that connected to us
    sources = set()  # "ip:port" of the peers that sent us a block
    state = {}
    target = None
    if args.job in ("dht-get-peers", "dht-announce"):
        target = lt.sha1_hash(bytes.fromhex(args.info_hash))

    while time.monotonic() < deadline:
        now = time.monotonic()
        for alert in ses.pop_alerts():
            if isinstance(alert, lt.dht_get_peers_reply_alert):
                for ep in alert.peers():
                    found.add("%s:%d" % (ep[0], ep[1]))
                emit(event="dht_peers", info_hash=str(alert.info_hash), peers=sorted(found))
            elif isinstance(alert, lt.incoming_connection_alert):
                incoming.add("%s:%d" % (alert.endpoint[0], alert.endpoint[1]))
            elif isinstance(alert, lt.block_finished_alert):
                sources.add("%s:%d" % (alert.endpoint[0], alert.endpoint[1]))
            elif isinstance(alert, (lt.torrent_error_alert, lt.file_error_alert, lt.hash_failed_alert)):
                emit(event="alert", type=type(alert).__name__, message=alert.message())
            elif isinstance(alert, lt.peer_error_alert) or isinstance(alert, lt.peer_disconnected_alert):
                emit(event="alert", type=type(alert).__name__, message=alert.message())
        nodes = ses.status().dht_nodes
        if handle is not None:
            st = handle.status()
            if now - last_status >= args.status_interval:
                last_status = now
                emit(event="status", state=str(st.state), progress=st.progress, peers=st.num_peers,
                     dht_nodes=nodes, total_done=st.total_done, has_metadata=st.has_metadata)
            if now - last_announce >= args.announce_every and not args.no_dht:
                last_announce = now
                handle.force_dht_announce()
            if args.job == "get" and st.is_seeding:
                emit(event="done", total_done=st.total_done, name=handle.torrent_file().name(),
                     sources=sorted(sources - incoming), sources_in=sorted(sources & incoming))
                return 0
            if args.job == "seed" and st.is_seeding:
                if ready_since is None:
                    ready_since = now
                    emit(event="ready", total_done=st.total_done)
                if args.linger and now - ready_since >= args.linger:
                    emit(event="done")
                    return 0
        else:
            if now - last_status >= args.status_interval:
                last_status = now
                emit(event="status", dht_nodes=nodes)
            if now - last_announce >= args.announce_every:
                last_announce = now
                if args.job == "dht-get-peers":
                    ses.dht_get_peers(target)
                else:
                    port = dht_announce(ses, target, args, state)
                    if ready_since is None:
                        ready_since = now
                        emit(event="announced", port=port, via=state["via"])
            if args.job == "dht-get-peers" and len(found) >= args.want:
                emit(event="done", peers=sorted(found))
                return 0
            if args.job == "dht-announce" and ready_since is not None and args.linger and now - ready_since >= args.linger:
                emit(event="done")
                return 0
        time.sleep(0.05)
    emit(event="error", message="timeout after %ss" % args.timeout)
    return 1


if __name__ == "__main__":
    sys.exit(main())
