#!/usr/bin/python3
"""A loopback-only libtorrent peer for the wire crate's interop tests.

  lt_wire_peer.py create DATA_PATH TORRENT_OUT PIECE_SIZE   make a v1-only .torrent
  lt_wire_peer.py seed TORRENT SAVE_DIR                     seed until killed; print {"port": P}
  lt_wire_peer.py get INFO_HASH_HEX SAVE_DIR PEER_IP:PORT   fetch by info-hash from PEER

No DHT, LSD, UPnP or NAT-PMP: peers are given directly. One JSON object per line on
stdout. Every loop ends at a 60 s deadline.
"""
import json
import os
import sys
import time

import libtorrent as lt


def emit(**o):
    sys.stdout.write(json.dumps(o) + "\n")
    sys.stdout.flush()


def session():
    return lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "min_reconnect_time": 1,
        "max_failcount": 100,
        "alert_mask": lt.alert.category_t.all_categories,
    })


def main():
    job = sys.argv[1]
    deadline = time.monotonic() + 60
    if job == "create":
        data, out, piece = sys.argv[2], sys.argv[3], int(sys.argv[4])
        fs = lt.file_storage()
        lt.add_files(fs, data)
        t = lt.create_torrent(fs, piece, flags=lt.create_torrent.v1_only)
        lt.set_piece_hashes(t, os.path.dirname(data))
        with open(out, "wb") as f:
            f.write(lt.bencode(t.generate()))
        emit(event="created")
        return 0
    ses = session()
    atp = lt.add_torrent_params()
    # Start at once: not paused, not queued behind the auto-manager.
    not_queued = ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    if job == "seed":
        atp.ti = lt.torrent_info(sys.argv[2])
        atp.save_path = sys.argv[3]
        atp.flags = (atp.flags | lt.torrent_flags.seed_mode) & not_queued
        h = ses.add_torrent(atp)
    else:
        atp = lt.parse_magnet_uri("magnet:?xt=urn:btih:" + sys.argv[2])
        atp.save_path = sys.argv[3]
        atp.flags &= not_queued
        h = ses.add_torrent(atp)
        host, _, port = sys.argv[4].rpartition(":")
        h.connect_peer((host, int(port)))
    announced = False
    listening = False
    checked = False
    while time.monotonic() < deadline:
        for a in ses.pop_alerts():
            if isinstance(a, lt.listen_succeeded_alert):
                listening = True
            if isinstance(a, lt.torrent_checked_alert):
                checked = True
            if a.category() & (lt.alert.category_t.error_notification | lt.alert.category_t.peer_notification):
                emit(event="alert", type=type(a).__name__, message=a.message())
        # Announce the port only once the listen socket is up and (for a seed) the
        # torrent is ready, so the first connection is not turned away.
        if not announced and listening and (job == "get" or checked):
            emit(event="listening", port=ses.listen_port())
            announced = True
        st = h.status()
        if job == "get" and st.is_seeding:
            emit(event="done", total_done=st.total_done)
            return 0
        time.sleep(0.05)
    emit(event="error", message="timeout")
    return 1


if __name__ == "__main__":
    sys.exit(main())
