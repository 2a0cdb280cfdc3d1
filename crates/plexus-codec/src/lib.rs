//! The single codec module of Plexus.
//!
//! Every byte that crosses a node boundary is produced and checked here, so the
//! serialisation format (bincode `=2.0.1`, pinned because 3.x is a deliberate
//! compile error) can be swapped in one place. Sizes are checked on **both**
//! sides: a frame over the limit is refused before it is sent, because a peer
//! that receives an oversized frame drops the whole link.

use serde::{de::DeserializeOwned, Serialize};

/// Default largest encoded message Plexus sends or accepts (4 MiB).
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// What went wrong encoding or decoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The encoded value is larger than the frame limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The bytes are not a valid frame of the expected type.
    #[error("malformed frame ({len} bytes): {reason}")]
    Malformed { len: usize, reason: String },
    /// The bytes decoded but left unread bytes behind.
    #[error("malformed frame: {trailing} trailing bytes after the message")]
    Trailing { trailing: usize },
}

fn config() -> impl bincode::config::Config {
    // Variable-length integers keep small control messages small; the decode
    // limit stops a forged length prefix from allocating gigabytes.
    bincode::config::standard().with_limit::<{ DEFAULT_MAX_FRAME * 4 }>()
}

/// Most frames (bus envelopes, SWIM packets) fit in this; starting there
/// saves the half-dozen reallocations of growing from empty.
const INITIAL_CAPACITY: usize = 256;

/// A `Vec` writer that stops at the frame limit, so an oversized value is
/// refused without being encoded whole first.
struct LimitedVec {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl bincode::enc::write::Writer for LimitedVec {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if self.buf.len() + bytes.len() > self.limit {
            self.over = true;
            return Err(bincode::error::EncodeError::Other("over the frame limit"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// Encode `value`, refusing results over `limit` bytes.
pub fn encode_limited<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut w = LimitedVec {
        buf: Vec::with_capacity(INITIAL_CAPACITY.min(limit)),
        limit,
        over: false,
    };
    match bincode::serde::encode_into_writer(value, &mut w, config()) {
        Ok(()) => Ok(w.buf),
        Err(_) if w.over => {
            // Only to say how large it is: count without storing.
            let mut size = bincode::enc::write::SizeWriter::default();
            let size = match bincode::serde::encode_into_writer(value, &mut size, config()) {
                Ok(()) => size.bytes_written,
                Err(_) => limit.saturating_add(1),
            };
            Err(CodecError::TooLarge { size, limit })
        }
        Err(e) => Err(CodecError::Encode(e.to_string())),
    }
}

/// Encode `value` under the default frame limit.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_limited(value, DEFAULT_MAX_FRAME)
}

/// Decode a `T` from exactly `bytes`, refusing frames over `limit` bytes,
/// malformed input and trailing garbage.
pub fn decode_limited<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Malformed {
            len: bytes.len(),
            reason: e.to_string(),
        })?;
    if read != bytes.len() {
        return Err(CodecError::Trailing {
            trailing: bytes.len() - read,
        });
    }
    Ok(value)
}

/// Decode under the default frame limit.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_limited(bytes, DEFAULT_MAX_FRAME)
}

/// Decode one `T` from the front of `bytes`, returning it and the number of
/// bytes consumed (for formats that pack several items in one buffer).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Malformed {
        len: bytes.len(),
        reason: e.to_string(),
    })
}

/// Encode into the end of an existing buffer, returning how many bytes were added.
pub fn encode_append<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<usize, CodecError> {
    let bytes = encode(value)?;
    out.extend_from_slice(&bytes);
    Ok(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        id: u64,
        text: String,
        tags: Vec<String>,
    }

    #[test]
    fn round_trip() {
        let m = Msg {
            id: 7,
            text: "hello".into(),
            tags: vec!["a".into()],
        };
        let b = encode(&m).unwrap();
        assert_eq!(decode::<Msg>(&b).unwrap(), m);
    }

    #[test]
    fn refuses_oversized_on_send() {
        let m = Msg {
            id: 1,
            text: "x".repeat(100),
            tags: vec![],
        };
        // The error says how large the frame would have been.
        let whole = encode(&m).unwrap().len();
        assert!(matches!(
            encode_limited(&m, 50),
            Err(CodecError::TooLarge { limit: 50, size }) if size == whole
        ));
        // Exactly at the limit is fine.
        assert_eq!(encode_limited(&m, whole).unwrap().len(), whole);
        assert!(encode_limited(&m, whole - 1).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for garbage in [&b""[..], b"\xff\xff\xff\xff\xff\xff", b"\x07\x05hel"] {
            assert!(decode::<Msg>(garbage).is_err());
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut b = encode(&Msg {
            id: 1,
            text: String::new(),
            tags: vec![],
        })
        .unwrap();
        b.push(0);
        assert!(matches!(
            decode::<Msg>(&b),
            Err(CodecError::Trailing { trailing: 1 })
        ));
    }

    #[test]
    fn forged_length_does_not_allocate() {
        // A string claiming u64::MAX bytes must fail fast.
        let mut b = vec![7u8];
        b.push(0xff);
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Msg>(&b).is_err());
    }
}
