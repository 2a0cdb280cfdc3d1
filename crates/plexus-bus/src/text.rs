//! Short strings without heap allocations on the publish path.
//!
//! An envelope's names (topic, source, node, destination, span) are
//! [`CompactString`]s: up to 24 bytes sit inline, so building, moving and
//! dropping a typical envelope does not touch the allocator (each `String`
//! was one allocation, made on the publisher's thread and freed on the
//! subscriber's). A trace id is 32 hex digits, one past that, so it has
//! its own type with 32 bytes inline. Both serialize as plain strings: the
//! wire encoding and the JSON are unchanged.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

pub use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const INLINE: usize = 32;

/// A trace id: any string, stored inline up to 32 bytes (a W3C or
/// generated trace id), on the heap past that.
#[derive(Clone)]
pub struct TraceId(Repr);

#[derive(Clone)]
enum Repr {
    /// `len` bytes of `buf`, valid UTF-8 (only built from a `&str`).
    Inline {
        len: u8,
        buf: [u8; INLINE],
    },
    Heap(Box<str>),
}

impl TraceId {
    /// The trace id of a message that starts a trace: its id in 32
    /// lowercase hex digits.
    pub fn from_uuid(id: uuid::Uuid) -> TraceId {
        let mut buf = [0u8; INLINE];
        id.simple().encode_lower(&mut buf);
        TraceId(Repr::Inline {
            len: INLINE as u8,
            buf,
        })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Built from a `&str` cut at its own length, so always UTF-8;
            // the fallback is unreachable but keeps this free of `unsafe`.
            Repr::Inline { len, buf } => std::str::from_utf8(&buf[..*len as usize]).unwrap_or(""),
            Repr::Heap(s) => s,
        }
    }
}

impl From<&str> for TraceId {
    fn from(s: &str) -> TraceId {
        if s.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            TraceId(Repr::Inline {
                len: s.len() as u8,
                buf,
            })
        } else {
            TraceId(Repr::Heap(s.into()))
        }
    }
}

impl From<String> for TraceId {
    fn from(s: String) -> TraceId {
        if s.len() <= INLINE {
            TraceId::from(s.as_str())
        } else {
            TraceId(Repr::Heap(s.into_boxed_str()))
        }
    }
}

impl From<&String> for TraceId {
    fn from(s: &String) -> TraceId {
        TraceId::from(s.as_str())
    }
}

impl From<TraceId> for String {
    fn from(t: TraceId) -> String {
        t.as_str().to_string()
    }
}

impl Default for TraceId {
    fn default() -> TraceId {
        TraceId::from("")
    }
}

impl Deref for TraceId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for TraceId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for TraceId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

// Equality, order and hash are the text's, as `Borrow<str>` requires.
impl PartialEq for TraceId {
    fn eq(&self, other: &TraceId) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for TraceId {}

impl std::hash::Hash for TraceId {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl PartialOrd for TraceId {
    fn partial_cmp(&self, other: &TraceId) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TraceId {
    fn cmp(&self, other: &TraceId) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialEq<str> for TraceId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for TraceId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for TraceId {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl Serialize for TraceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TraceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TraceId, D::Error> {
        // Through CompactString: short ids decode without a heap string.
        CompactString::deserialize(d).map(|s| TraceId::from(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_heap_ids_round_trip_as_plain_strings() {
        let id = uuid::Uuid::now_v7();
        let t = TraceId::from_uuid(id);
        assert_eq!(t.as_str(), id.simple().to_string());
        assert_eq!(t, TraceId::from(id.simple().to_string()));
        let long = "x".repeat(40);
        for s in ["", "abc", "é-trace", long.as_str()] {
            let t = TraceId::from(s);
            assert_eq!(t, *s);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, serde_json::to_string(s).unwrap());
            assert_eq!(serde_json::from_str::<TraceId>(&json).unwrap(), t);
        }
    }
}
