//! Raw serial framing: bytes from a line into messages, and messages into bytes for the line.
//!
//! Owns the three framings of `[[serial.ports]]`: `line` (a delimiter ends a frame), `length`
//! (a 1-, 2- or 4-byte length prefix) and `idle` (a frame ends when the line goes quiet), each
//! bounded by `max_frame`. Sans-IO: it never reads a port or a clock; the caller says when the
//! line went quiet.

/// How a port's bytes are cut into messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// A frame ends at `delimiter` (removed, and a `\r` before a `\n` delimiter with it);
    /// writes get the delimiter appended.
    Line {
        /// The delimiter (default `\n`).
        delimiter: Vec<u8>,
    },
    /// Each frame starts with its length, excluding the prefix; writes get the prefix.
    Length {
        /// Bytes of the prefix: 1, 2 or 4.
        prefix: u8,
        /// Big-endian prefix (true) or little-endian.
        big_endian: bool,
    },
    /// A frame is whatever arrived before the line went quiet for the configured gap; writes
    /// are sent as they are.
    Idle,
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame.
    Frame(Vec<u8>),
    /// A frame longer than `max_frame`: dropped (`line`, `length`) or cut into pieces of
    /// `max_frame` bytes (`idle`, each piece a frame). Counted by the caller.
    Oversized {
        /// Bytes dropped (0 when the piece was passed on as a frame).
        dropped: usize,
    },
}

/// Cuts a byte stream into frames.
#[derive(Debug)]
pub struct Decoder {
    framing: Framing,
    max_frame: usize,
    buf: Vec<u8>,
    /// `line`: bytes of an oversized frame dropped so far; `length`: bytes of one still to
    /// drop.
    discarding: usize,
    /// Dropping an oversized frame.
    in_discard: bool,
}

impl Decoder {
    /// A decoder for `framing` that holds at most `max_frame` bytes of one frame.
    pub fn new(framing: Framing, max_frame: usize) -> Decoder {
        Decoder {
            framing,
            max_frame: max_frame.max(1),
            buf: Vec::new(),
            discarding: 0,
            in_discard: false,
        }
    }

    /// Whether bytes of an unfinished frame are buffered (for `idle`: a frame is due when the
    /// line stays quiet).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Takes bytes read from the line; returns the frames they complete.
    pub fn push(&mut self, data: &[u8]) -> Vec<Decoded> {
        let mut out = Vec::new();
        match self.framing.clone() {
            Framing::Line { delimiter } => {
                // Byte by byte: serial lines are slow, and the delimiter may straddle reads.
                let keep = delimiter.len().saturating_sub(1);
                for &byte in data {
                    self.buf.push(byte);
                    if self.in_discard {
                        // `buf` is a window over the dropped bytes, to see the delimiter.
                        if self.buf.ends_with(&delimiter) {
                            let dropped = self.discarding + self.buf.len() - delimiter.len();
                            out.push(Decoded::Oversized { dropped });
                            self.buf.clear();
                            self.discarding = 0;
                            self.in_discard = false;
                        } else if self.buf.len() > keep {
                            self.buf.remove(0);
                            self.discarding += 1;
                        }
                        continue;
                    }
                    if self.buf.ends_with(&delimiter) {
                        let mut frame = std::mem::take(&mut self.buf);
                        frame.truncate(frame.len() - delimiter.len());
                        if delimiter == b"\n" && frame.last() == Some(&b'\r') {
                            frame.pop();
                        }
                        out.push(Decoded::Frame(frame));
                    } else if self.buf.len() > self.max_frame + keep {
                        // No delimiter within max_frame: drop up to the next one.
                        let drop = self.buf.len() - keep;
                        self.buf.drain(..drop);
                        self.discarding = drop;
                        self.in_discard = true;
                    }
                }
            }
            Framing::Length { prefix, big_endian } => {
                let prefix = usize::from(prefix);
                let mut data = data;
                while !data.is_empty() {
                    if self.discarding > 0 {
                        let n = self.discarding.min(data.len());
                        self.discarding -= n;
                        data = &data[n..];
                        if self.discarding == 0 {
                            self.in_discard = false;
                        }
                        continue;
                    }
                    self.buf.push(data[0]);
                    data = &data[1..];
                    if self.buf.len() < prefix {
                        continue;
                    }
                    let len = length_of(&self.buf[..prefix], big_endian);
                    if len > self.max_frame {
                        out.push(Decoded::Oversized { dropped: len });
                        self.buf.clear();
                        self.discarding = len;
                        self.in_discard = true;
                        continue;
                    }
                    if self.buf.len() == prefix + len {
                        out.push(Decoded::Frame(self.buf.split_off(prefix)));
                        self.buf.clear();
                    }
                }
            }
            Framing::Idle => {
                let mut data = data;
                while !data.is_empty() {
                    let room = self.max_frame - self.buf.len();
                    let n = room.min(data.len());
                    self.buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.buf.len() == self.max_frame {
                        out.push(Decoded::Oversized { dropped: 0 });
                        out.push(Decoded::Frame(std::mem::take(&mut self.buf)));
                    }
                }
            }
        }
        out
    }

    /// The line went quiet: for `idle`, what is buffered is a frame.
    pub fn idle(&mut self) -> Option<Vec<u8>> {
        match self.framing {
            Framing::Idle if !self.buf.is_empty() => Some(std::mem::take(&mut self.buf)),
            _ => None,
        }
    }
}

fn length_of(prefix: &[u8], big_endian: bool) -> usize {
    let mut bytes = prefix.to_vec();
    if !big_endian {
        bytes.reverse();
    }
    let n = bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A message too long for the framing (`length`: the prefix cannot hold it; any: past
/// `max_frame`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes do not fit one frame (at most {max})")]
pub struct TooLong {
    /// The message's length.
    pub len: usize,
    /// The most a frame takes.
    pub max: usize,
}

/// A message as it goes on the line.
pub fn encode(framing: &Framing, max_frame: usize, payload: &[u8]) -> Result<Vec<u8>, TooLong> {
    let too_long = |max: usize| TooLong {
        len: payload.len(),
        max,
    };
    if payload.len() > max_frame {
        return Err(too_long(max_frame));
    }
    Ok(match framing {
        Framing::Line { delimiter } => {
            let mut out = payload.to_vec();
            if !out.ends_with(delimiter) {
                out.extend_from_slice(delimiter);
            }
            out
        }
        Framing::Length { prefix, big_endian } => {
            let prefix = usize::from(*prefix);
            let max = if prefix >= 8 {
                usize::MAX
            } else {
                (1usize << (8 * prefix)) - 1
            };
            if payload.len() > max {
                return Err(too_long(max));
            }
            let be = (payload.len() as u64).to_be_bytes();
            let mut head = be[8 - prefix..].to_vec();
            if !big_endian {
                head.reverse();
            }
            head.extend_from_slice(payload);
            head
        }
        Framing::Idle => payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(out: Vec<Decoded>) -> Vec<Vec<u8>> {
        out.into_iter()
            .filter_map(|d| match d {
                Decoded::Frame(f) => Some(f),
                Decoded::Oversized { .. } => None,
            })
            .collect()
    }

    #[test]
    fn lines_split_at_the_delimiter_whatever_the_reads() {
        let mut d = Decoder::new(
            Framing::Line {
                delimiter: b"\n".to_vec(),
            },
            64,
        );
        assert!(d.push(b"12.5 k").is_empty());
        assert_eq!(
            frames(d.push(b"g\r\n13.0 kg\nST")),
            vec![b"12.5 kg".to_vec(), b"13.0 kg".to_vec()]
        );
        assert!(d.has_partial());
        assert_eq!(frames(d.push(b"ABLE\n")), vec![b"STABLE".to_vec()]);
        let mut d = Decoder::new(
            Framing::Line {
                delimiter: b"\r\n".to_vec(),
            },
            64,
        );
        assert!(d.push(b"a\r").is_empty());
        assert_eq!(
            frames(d.push(b"\nb\r\n")),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }

    #[test]
    fn an_endless_line_is_dropped_up_to_the_next_delimiter() {
        let mut d = Decoder::new(
            Framing::Line {
                delimiter: b"\n".to_vec(),
            },
            8,
        );
        let mut out = d.push(&[b'x'; 100]);
        out.extend(d.push(b"yy\nok\n"));
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(out[0], Decoded::Oversized { dropped } if dropped == 102));
        assert_eq!(out[1], Decoded::Frame(b"ok".to_vec()));
    }

    #[test]
    fn length_prefixed_frames_both_endians() {
        let mut d = Decoder::new(
            Framing::Length {
                prefix: 2,
                big_endian: true,
            },
            64,
        );
        assert_eq!(frames(d.push(&[0, 3, b'a', b'b'])), Vec::<Vec<u8>>::new());
        assert_eq!(
            frames(d.push(&[b'c', 0, 0, 0, 1, b'z'])),
            vec![b"abc".to_vec(), vec![], b"z".to_vec()]
        );
        let mut d = Decoder::new(
            Framing::Length {
                prefix: 4,
                big_endian: false,
            },
            64,
        );
        assert_eq!(frames(d.push(&[2, 0, 0, 0, 9, 8])), vec![vec![9, 8]]);
        assert_eq!(
            encode(
                &Framing::Length {
                    prefix: 4,
                    big_endian: false
                },
                64,
                &[9, 8]
            ),
            Ok(vec![2, 0, 0, 0, 9, 8])
        );
        assert!(encode(
            &Framing::Length {
                prefix: 1,
                big_endian: true
            },
            1024,
            &[0; 256]
        )
        .is_err());
    }

    #[test]
    fn an_oversized_length_is_skipped_and_the_stream_goes_on() {
        let mut d = Decoder::new(
            Framing::Length {
                prefix: 1,
                big_endian: true,
            },
            4,
        );
        let mut input = vec![10];
        input.extend([0u8; 10]);
        input.extend([2, b'o', b'k']);
        let out = d.push(&input);
        assert_eq!(
            out,
            vec![
                Decoded::Oversized { dropped: 10 },
                Decoded::Frame(b"ok".to_vec())
            ]
        );
    }

    #[test]
    fn idle_frames_end_when_the_caller_says_the_line_is_quiet() {
        let mut d = Decoder::new(Framing::Idle, 4);
        assert!(d.push(b"ab").is_empty());
        assert_eq!(d.idle(), Some(b"ab".to_vec()));
        assert_eq!(d.idle(), None);
        let out = d.push(b"abcdef");
        assert_eq!(
            out,
            vec![
                Decoded::Oversized { dropped: 0 },
                Decoded::Frame(b"abcd".to_vec())
            ]
        );
        assert_eq!(d.idle(), Some(b"ef".to_vec()));
    }

    proptest! {
        #[test]
        fn encoded_frames_decode_to_themselves(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n' && *b != b'\r'), 0..40), 1..10),
            cut in 1usize..50,
            prefix in prop_oneof![Just(1u8), Just(2), Just(4)],
        ) {
            for framing in [Framing::Line { delimiter: b"\n".to_vec() }, Framing::Length { prefix, big_endian: prefix != 2 }] {
                let mut wire = Vec::new();
                for m in &msgs {
                    wire.extend(encode(&framing, 64, m).unwrap_or_default());
                }
                let mut d = Decoder::new(framing.clone(), 64);
                let mut got = Vec::new();
                for chunk in wire.chunks(cut) {
                    got.extend(frames(d.push(chunk)));
                }
                prop_assert_eq!(&got, &msgs);
            }
        }

        #[test]
        fn garbage_never_panics_nor_grows_past_the_bound(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            for framing in [Framing::Line { delimiter: b"\r\n".to_vec() }, Framing::Length { prefix: 2, big_endian: true }, Framing::Idle] {
                let mut d = Decoder::new(framing, 32);
                for chunk in data.chunks(7) {
                    for out in d.push(chunk) {
                        if let Decoded::Frame(f) = out {
                            prop_assert!(f.len() <= 32);
                        }
                    }
                    prop_assert!(d.buf.len() <= 32 + 2);
                }
            }
        }
    }
}
