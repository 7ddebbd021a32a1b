//! Bencode (BEP 3) for untrusted input: a zero-copy decoder that is bounded before it
//! allocates and never panics, and a small encoder that writes canonical output.
//!
//! The decoder borrows from the input, so byte strings cost nothing and every dictionary
//! and list remembers the exact bytes it was parsed from ([`Dict::raw`]). That raw span is
//! what the info-hash of a torrent is computed over: re-encoding a parsed dictionary would
//! drop unknown keys or fix up non-canonical input and change the hash.
//!
//! Memory is bounded by the input: every value costs at least two input bytes, so the
//! vectors built for lists and dictionaries can never hold more entries than the input has
//! bytes. Nesting depth is bounded by [`Limits::max_depth`] so hostile input cannot exhaust
//! the stack.

mod decode;
mod encode;
mod value;

pub use decode::{decode, decode_prefix, decode_prefix_with, decode_with, DecodeError, Limits};
pub use encode::{Encoder, ToBencode};
pub use value::{Dict, List, Value};
