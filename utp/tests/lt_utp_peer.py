#!/usr/bin/python3
"""A libtorrent peer that speaks only uTP, for the utp crate's interop test.

Usage: lt_utp_peer.py seed LISTEN_IP
       lt_utp_peer.py leech LISTEN_IP PEER_IP:PEER_PORT

Both modes build the same v1 torrent over the same generated 1 MiB file (16 KiB pieces).
`seed` has the data; `leech` starts empty and dials the peer given. Prints lines:
  READY <udp port> <info-hash hex>
  COMPLETE                     (leech: every piece arrived and passed its hash check)
Runs until stdin closes, or 60 s pass. Nothing leaves loopback: no DHT, LSD, UPnP, NAT-PMP.
"""

import os
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

import libtorrent as lt  # noqa: E402

PIECE = 16 * 1024
SIZE = 1024 * 1024


def content():
    # The same bytes the Rust side checks against: byte i is (i * 7 + i // 1000) mod 256.
    return bytes(((i * 7) + (i // 1000)) & 0xFF for i in range(SIZE))


def main():
    mode, listen_ip = sys.argv[1], sys.argv[2]
    src = tempfile.mkdtemp(prefix="lt-utp-src-")
    with open(os.path.join(src, "utp.bin"), "wb") as f:
        f.write(content())
    fs = lt.file_storage()
    lt.add_files(fs, os.path.join(src, "utp.bin"))
    ct = lt.create_torrent(fs, PIECE, lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, src)
    ti = lt.torrent_info(ct.generate())

    save = src if mode == "seed" else tempfile.mkdtemp(prefix="lt-utp-dst-")
    ses = lt.session({
        "listen_interfaces": listen_ip + ":0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": True,
        "enable_incoming_utp": True,
        "enable_outgoing_tcp": False,
        "enable_incoming_tcp": False,
        "allow_multiple_connections_per_ip": True,
        # Plain BitTorrent: the test speaks no message stream encryption.
        "out_enc_policy": int(lt.enc_policy.disabled),
        "in_enc_policy": int(lt.enc_policy.disabled),
        "min_reconnect_time": 1,
        "alert_mask": 0,
    })
    h = ses.add_torrent({"ti": ti, "save_path": save})
    deadline = time.time() + 60
    # Ready means accepting peers: seeding for the seeder, downloading for the leecher.
    ready_state = lt.torrent_status.seeding if mode == "seed" else lt.torrent_status.downloading
    while h.status().state != ready_state:
        if time.time() > deadline:
            sys.exit(1)
        time.sleep(0.05)
    print("READY", ses.listen_port(), str(ti.info_hashes().v1), flush=True)

    if mode == "leech":
        ip, port = sys.argv[3].rsplit(":", 1)
        h.connect_peer((ip, int(port)))
        while time.time() < deadline:
            if h.status().is_seeding:
                print("COMPLETE", flush=True)
                break
            time.sleep(0.05)

    # Stay up until the test closes our stdin.
    os.set_blocking(sys.stdin.fileno(), True)
    while time.time() < deadline:
        if not sys.stdin.read(1):
            break


if __name__ == "__main__":
    main()
