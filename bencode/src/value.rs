//! The decoded value tree, borrowing from the input buffer.

use std::fmt;

/// A decoded bencode value. Byte strings borrow from the input.
#[derive(Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(List<'a>),
    Dict(Dict<'a>),
}

/// A decoded list together with the exact input bytes it came from.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct List<'a> {
    pub items: Vec<Value<'a>>,
    pub raw: &'a [u8],
}

/// A decoded dictionary, in input order, together with the exact input bytes it came from.
///
/// Keys are kept in the order they appeared; canonical input has them sorted and unique, and
/// the decoder rejects duplicates, so [`Dict::get`] is unambiguous.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Dict<'a> {
    pub entries: Vec<(&'a [u8], Value<'a>)>,
    pub raw: &'a [u8],
}

impl<'a> Value<'a> {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The byte string as UTF-8, if it is a byte string and valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn as_list(&self) -> Option<&List<'a>> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&Dict<'a>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "integer",
            Value::Bytes(_) => "byte string",
            Value::List(_) => "list",
            Value::Dict(_) => "dictionary",
        }
    }
}

impl<'a> Dict<'a> {
    /// The value stored under `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn get_int(&self, key: &[u8]) -> Option<i64> {
        self.get(key).and_then(Value::as_int)
    }

    pub fn get_bytes(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.get(key).and_then(Value::as_bytes)
    }

    pub fn get_str(&self, key: &[u8]) -> Option<&'a str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_list(&self, key: &[u8]) -> Option<&List<'a>> {
        self.get(key).and_then(Value::as_list)
    }

    pub fn get_dict(&self, key: &[u8]) -> Option<&Dict<'a>> {
        self.get(key).and_then(Value::as_dict)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<'a> List<'a> {
    pub fn iter(&self) -> std::slice::Iter<'_, Value<'a>> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<'a, 'b> IntoIterator for &'b List<'a> {
    type Item = &'b Value<'a>;
    type IntoIter = std::slice::Iter<'b, Value<'a>>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// Byte strings print as text when printable, as hex otherwise.
struct ShowBytes<'a>(&'a [u8]);

impl fmt::Debug for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => write!(f, "{s:?}"),
            _ => {
                f.write_str("0x")?;
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bytes(b) => ShowBytes(b).fmt(f),
            Value::List(l) => l.fmt(f),
            Value::Dict(d) => d.fmt(f),
        }
    }
}

impl fmt::Debug for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.items).finish()
    }
}

impl fmt::Debug for Dict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (ShowBytes(k), v)))
            .finish()
    }
}
