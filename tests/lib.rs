//! Shared helpers for the integration tests (process spawning, loopback addresses, libtorrent detection).
