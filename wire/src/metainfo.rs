//! Metainfo (.torrent) files (BEP 3).
