//! Magnet URIs (BEP 9).
