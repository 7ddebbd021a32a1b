//! Property tests: canonical values round-trip byte for byte, and no input panics.

use bencode::{decode, decode_prefix, Dict, List, ToBencode, Value};
use proptest::prelude::*;

/// An owned value tree that proptest can generate; borrowed `Value`s are built from it.
#[derive(Clone, Debug)]
enum Owned {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Owned>),
    Dict(std::collections::BTreeMap<Vec<u8>, Owned>),
}

fn owned() -> impl Strategy<Value = Owned> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Owned::Int),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Owned::Bytes),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Owned::List),
            proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..12),
                inner,
                0..8
            )
            .prop_map(Owned::Dict),
        ]
    })
}

fn borrow(o: &Owned) -> Value<'_> {
    match o {
        Owned::Int(i) => Value::Int(*i),
        Owned::Bytes(b) => Value::Bytes(b),
        Owned::List(l) => Value::List(List {
            items: l.iter().map(borrow).collect(),
            raw: &[],
        }),
        Owned::Dict(d) => Value::Dict(Dict {
            entries: d.iter().map(|(k, v)| (k.as_slice(), borrow(v))).collect(),
            raw: &[],
        }),
    }
}

/// Structural equality that ignores the raw spans (the generated tree has none).
fn same(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Bytes(x), Value::Bytes(y)) => x == y,
        (Value::List(x), Value::List(y)) => {
            x.items.len() == y.items.len() && x.items.iter().zip(&y.items).all(|(a, b)| same(a, b))
        }
        (Value::Dict(x), Value::Dict(y)) => {
            x.entries.len() == y.entries.len()
                && x.entries
                    .iter()
                    .zip(&y.entries)
                    .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
        }
        _ => false,
    }
}

proptest! {
    #[test]
    fn canonical_round_trip(o in owned()) {
        let v = borrow(&o);
        let bytes = v.to_bencode();
        let back = decode(&bytes).expect("canonical encoding decodes");
        prop_assert!(same(&v, &back));
        prop_assert_eq!(back.to_bencode(), bytes.clone());
        // The top-level raw span of a container is the whole input.
        match &back {
            Value::Dict(d) => prop_assert_eq!(d.raw, &bytes[..]),
            Value::List(l) => prop_assert_eq!(l.raw, &bytes[..]),
            _ => {}
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let _ = decode_prefix(&bytes);
    }

    #[test]
    fn mutated_valid_input_never_panics(o in owned(), idx in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = borrow(&o).to_bencode();
        let i = idx % bytes.len();
        bytes[i] = byte;
        let _ = decode(&bytes);
    }

    #[test]
    fn every_strict_prefix_is_rejected(o in owned(), idx in any::<usize>()) {
        let bytes = borrow(&o).to_bencode();
        let cut = idx % bytes.len();
        prop_assert!(decode(&bytes[..cut]).is_err());
    }
}
