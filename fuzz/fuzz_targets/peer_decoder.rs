//! Arbitrary bytes into the streaming peer wire `Decoder`, in arbitrary chunk splits.
//!
//! Input: a flags byte (bit 0: a piece count is set), 3 bytes of piece count, 8 bytes of
//! split seed, then the stream. The stream is decoded twice: in one piece, and fed chunk
//! by chunk (sizes from the seed) the way a connection reads a socket. Checks:
//!
//! - both runs decode the same messages and end with the same error (or none);
//! - the decoded messages re-encode to exactly the bytes they were decoded from;
//! - the decoder never holds more than one frame of the largest legal size plus the last
//!   chunk read (`Ok(None)` means what is buffered is less than one frame), and its
//!   reservation stays within a small multiple of that;
//! - with a piece count set, every bitfield has exactly the right length and no spare bits.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire::peer::{bitfield_len, validate_bitfield, Decoder, Message, WireError};

/// Largest piece count a torrent can have (16 MiB of metadata / 20 bytes per hash).
const MAX_PIECES: u32 = 838_861;

fn decoder(pieces: Option<u32>) -> Decoder {
    let mut d = Decoder::default();
    if let Some(p) = pieces {
        d.set_piece_count(p);
    }
    d
}

/// Decodes `chunks` fed one after another; returns the messages, the error if any, and
/// how many bytes the messages took.
fn run<'a>(
    pieces: Option<u32>,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Vec<Message>, Option<WireError>, usize) {
    let mut d = decoder(pieces);
    let max_frame = 4 + d.max_frame_body();
    let mut buf = BytesMut::new();
    let mut msgs = Vec::new();
    let mut fed = 0usize;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => {
                    assert!(
                        buf.len() < max_frame,
                        "{} bytes buffered, frames are at most {max_frame}",
                        buf.len()
                    );
                    assert!(
                        buf.capacity() <= 2 * max_frame + 2 * chunk.len() + 64,
                        "reserved {} for frames of at most {max_frame}",
                        buf.capacity()
                    );
                    break;
                }
                Err(e) => return (msgs, Some(e), fed - buf.len()),
            }
        }
    }
    (msgs, None, fed - buf.len())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (head, stream) = data.split_at(12);
    let pieces = (head[0] & 1 != 0)
        .then(|| u32::from_be_bytes([0, head[1], head[2], head[3]]) % (MAX_PIECES + 1));
    let mut seed = u64::from_le_bytes(head[4..12].try_into().unwrap()) | 1;
    let max_chunk = 1 + (seed as usize % 97);

    let (whole, whole_err, used) = run(pieces, std::iter::once(stream));

    // Chunk sizes from a xorshift over the seed.
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = 1 + (seed as usize % max_chunk);
        let end = (at + n).min(stream.len());
        cuts.push(&stream[at..end]);
        at = end;
    }
    let (split, split_err, _) = run(pieces, cuts.into_iter());
    assert_eq!(whole, split, "chunking changed what was decoded");
    assert_eq!(whole_err, split_err, "chunking changed the error");

    let mut out = BytesMut::new();
    for m in &whole {
        let before = out.len();
        m.encode(&mut out);
        assert_eq!(out.len() - before, m.encoded_len());
        if let (Some(p), Message::Bitfield(bits)) = (pieces, m) {
            assert_eq!(bits.len(), bitfield_len(p));
            assert!(validate_bitfield(bits, p).is_ok());
        }
    }
    // The messages re-encode to the bytes they came from. Without an error that is all
    // the decoder consumed; an error may also have consumed the bad frame.
    assert_eq!(
        &out[..],
        &stream[..out.len()],
        "re-encoding differs from the input"
    );
    if whole_err.is_none() {
        assert_eq!(out.len(), used);
    } else {
        assert!(used >= out.len());
    }
});
