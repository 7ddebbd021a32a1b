//! BEP 10 extensions.
