//! Arbitrary bytes into the bencode decoder.
//!
//! The decoder accepts only canonical integers and string lengths and keeps dictionary
//! entries in input order (unsorted keys are accepted, duplicates are not), so whatever it
//! accepts must re-encode to exactly the input bytes, and every list and dictionary must
//! remember exactly the bytes it was parsed from.
#![no_main]

use bencode::{decode, decode_prefix, decode_with, DecodeError, Limits, ToBencode, Value};
use libfuzzer_sys::fuzz_target;

fn check_tree(v: &Value<'_>, depth: usize) -> usize {
    match v {
        Value::Int(_) | Value::Bytes(_) => depth,
        Value::List(l) => {
            assert_eq!(v.to_bencode(), l.raw, "list raw span");
            l.items
                .iter()
                .map(|i| check_tree(i, depth + 1))
                .max()
                .unwrap_or(depth + 1)
        }
        Value::Dict(d) => {
            assert_eq!(v.to_bencode(), d.raw, "dict raw span");
            let mut keys: Vec<&[u8]> = d.entries.iter().map(|(k, _)| *k).collect();
            keys.sort_unstable();
            assert!(
                keys.windows(2).all(|w| w[0] != w[1]),
                "duplicate key accepted"
            );
            for (k, _) in &d.entries {
                assert!(d.get(k).is_some());
            }
            d.entries
                .iter()
                .map(|(_, i)| check_tree(i, depth + 1))
                .max()
                .unwrap_or(depth + 1)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(v) => {
            assert_eq!(v.to_bencode(), data, "accepted input must be canonical");
            let depth = check_tree(&v, 0);
            assert!(depth <= Limits::default().max_depth);
            // The same value under a depth limit just big enough, and one too small.
            let exact = Limits {
                max_depth: depth,
                max_len: data.len(),
            };
            assert_eq!(decode_with(data, exact).as_ref(), Ok(&v));
            if depth > 0 {
                let tight = Limits {
                    max_depth: depth - 1,
                    max_len: data.len(),
                };
                assert!(matches!(
                    decode_with(data, tight),
                    Err(DecodeError::TooDeep { .. })
                ));
            }
        }
        Err(e) => {
            // The error offsets must point into (or just past) the input.
            let offset = match e {
                DecodeError::UnexpectedEof { offset }
                | DecodeError::UnexpectedByte { offset, .. }
                | DecodeError::InvalidInt { offset }
                | DecodeError::InvalidLength { offset }
                | DecodeError::NonStringKey { offset }
                | DecodeError::DuplicateKey { offset }
                | DecodeError::TooDeep { offset, .. } => offset,
                DecodeError::TooLong { .. } | DecodeError::TrailingData { .. } => 0,
            };
            assert!(offset <= data.len());
        }
    }
    // A prefix decode agrees with a whole decode of the prefix it used.
    if let Ok((v, used)) = decode_prefix(data) {
        assert!(used > 0 && used <= data.len());
        assert_eq!(v.to_bencode(), &data[..used]);
        assert_eq!(decode(&data[..used]).as_ref(), Ok(&v));
        if used < data.len() {
            assert_eq!(
                decode(data),
                Err(DecodeError::TrailingData {
                    extra: data.len() - used
                })
            );
        }
    }
});
