//! Block-wise transfer (RFC 7959), both ways: as a server, Block1 bodies sent to it
//! reassembled ([`Assembler`]) and Block2 bodies it sends sliced ([`slice`]); as a client (the
//! LwM2M server asking a device), a request body sent block by block ([`Upload`]) and a
//! response body fetched block by block ([`Download`]).
//!
//! Owns the partial Block1 bodies, keyed by whatever names one transfer (the gateway uses the
//! client and the request URI), each at most `max_body` bytes, at most `max_transfers` at
//! once (the oldest is dropped for a new one), each forgotten after `lifetime` without a
//! block. Blocks are placed by offset (num x size), so a peer that switches to a smaller size
//! continues where it was. Never builds packets and never sends.

pub use coap_lite::block_handler::BlockValue;
use coap_lite::ResponseType;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What a Block1 block led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// More blocks to come: answer 2.31 Continue echoing the Block1 option.
    Continue,
    /// The last block: the whole body.
    Complete(Vec<u8>),
}

/// Why a Block1 block was refused; the partial body is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// A block out of order, or a later block of a transfer not started (4.08 Request Entity
    /// Incomplete).
    #[error("block {num} does not continue the transfer (expected offset {expected}, got {got})")]
    Incomplete {
        /// The block number received.
        num: u16,
        /// The offset the transfer was at.
        expected: usize,
        /// The block's offset.
        got: usize,
    },
    /// The body would exceed the limit (4.13 Request Entity Too Large, with Size1).
    #[error("body larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// A block with More set whose payload is not the block size (4.00).
    #[error("block of {len} bytes with more to come, block size {size}")]
    BadSize {
        /// Its payload size.
        len: usize,
        /// The block size it announced.
        size: usize,
    },
}

#[derive(Debug)]
struct Partial {
    body: Vec<u8>,
    last: Instant,
}

/// What a server answers one Block1 block with.
#[derive(Debug, PartialEq)]
pub enum Block1Answer {
    /// 2.31 Continue, echoing this Block1 value (at the block size the server takes).
    Continue(BlockValue),
    /// The last block came: the request goes on with this whole body.
    Complete(Vec<u8>),
    /// The transfer is refused and forgotten: 4.13 (with Size1, the largest body taken),
    /// 4.08 or 4.00, and why.
    Refused {
        /// The response code.
        code: ResponseType,
        /// A diagnostic payload.
        why: String,
        /// Size1, with a 4.13.
        size1: Option<u32>,
    },
}

/// Block1 reassembly.
#[derive(Debug)]
pub struct Assembler<K> {
    partial: HashMap<K, Partial>,
    max_body: usize,
    max_transfers: usize,
    lifetime: Duration,
}

impl<K: Hash + Eq + Clone> Assembler<K> {
    /// Bodies of at most `max_body` bytes, at most `max_transfers` in progress, each dropped
    /// after `lifetime` without a block.
    pub fn new(max_body: usize, max_transfers: usize, lifetime: Duration) -> Self {
        Assembler {
            partial: HashMap::new(),
            max_body,
            max_transfers: max_transfers.max(1),
            lifetime,
        }
    }

    /// Takes one block of the transfer `key`.
    pub fn accept(
        &mut self,
        key: K,
        block: &BlockValue,
        payload: &[u8],
        now: Instant,
    ) -> Result<Step, BlockError> {
        self.expire(now);
        let size = block.size();
        let offset = usize::from(block.num) * size;
        if block.more && payload.len() != size {
            self.partial.remove(&key);
            return Err(BlockError::BadSize {
                len: payload.len(),
                size,
            });
        }
        if offset + payload.len() > self.max_body {
            self.partial.remove(&key);
            return Err(BlockError::TooLarge { max: self.max_body });
        }
        if block.num == 0 {
            if !self.partial.contains_key(&key) && self.partial.len() >= self.max_transfers {
                self.evict_oldest();
            }
            self.partial.insert(
                key.clone(),
                Partial {
                    body: Vec::new(),
                    last: now,
                },
            );
        }
        let expected = self.partial.get(&key).map_or(0, |p| p.body.len());
        let Some(p) = self.partial.get_mut(&key).filter(|_| expected == offset) else {
            self.partial.remove(&key);
            return Err(BlockError::Incomplete {
                num: block.num,
                expected,
                got: offset,
            });
        };
        p.body.extend_from_slice(payload);
        p.last = now;
        if block.more {
            return Ok(Step::Continue);
        }
        let body = self
            .partial
            .remove(&key)
            .map(|p| p.body)
            .unwrap_or_default();
        Ok(Step::Complete(body))
    }

    /// [`Assembler::accept`], as the answer a server sends: a Continue asks for blocks of at
    /// most `max_block_size` bytes from then on.
    pub fn answer(
        &mut self,
        key: K,
        block: &BlockValue,
        payload: &[u8],
        max_block_size: usize,
        now: Instant,
    ) -> Block1Answer {
        match self.accept(key, block, payload, now) {
            Ok(Step::Continue) => {
                let szx = block.size_exponent.min(szx_for(max_block_size));
                Block1Answer::Continue(value(block.num, true, szx))
            }
            Ok(Step::Complete(body)) => Block1Answer::Complete(body),
            Err(e) => Block1Answer::Refused {
                code: match e {
                    BlockError::TooLarge { .. } => ResponseType::RequestEntityTooLarge,
                    BlockError::Incomplete { .. } => ResponseType::RequestEntityIncomplete,
                    BlockError::BadSize { .. } => ResponseType::BadRequest,
                },
                why: e.to_string(),
                size1: match e {
                    BlockError::TooLarge { max } => Some(u32::try_from(max).unwrap_or(u32::MAX)),
                    _ => None,
                },
            },
        }
    }

    /// Transfers in progress.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    /// True when none is in progress.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        let lifetime = self.lifetime;
        self.partial
            .retain(|_, p| now.saturating_duration_since(p.last) < lifetime);
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .partial
            .iter()
            .min_by_key(|(_, p)| p.last)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.partial.remove(&k);
        }
    }
}

/// The Block1 transfer a request belongs to (with its sender): its path and query.
pub fn transfer_key(p: &coap_lite::Packet) -> String {
    let mut key = String::new();
    for (number, values) in p.options() {
        if matches!(*number, 11 | 15) {
            for v in values {
                key.push_str(&String::from_utf8_lossy(v));
                key.push('\u{0}');
            }
        }
    }
    key
}

/// What the block of a response body just taken leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Ask for this block next (same size as the peer's).
    Fetch(BlockValue),
    /// That was the last block: the whole body.
    Done(Vec<u8>),
}

/// A response body the peer sends block by block (Block2 in its responses), reassembled in
/// order up to `max_body` bytes.
#[derive(Debug)]
pub struct Download {
    body: Vec<u8>,
    max_body: usize,
}

impl Download {
    /// An empty body of at most `max_body` bytes.
    pub fn new(max_body: usize) -> Download {
        Download {
            body: Vec::new(),
            max_body,
        }
    }

    /// Takes the block a response carried (its Block2 option and payload): the block to ask
    /// for next, or the whole body after the last one. A block that is not the next one, a
    /// short block with more to come, a reserved size (BERT, SZX 7, is not for UDP) or a body
    /// past `max_body` is refused.
    pub fn take(&mut self, block: &BlockValue, payload: &[u8]) -> Result<Next, BlockError> {
        if block.size_exponent > 6 || (block.more && payload.len() != block.size()) {
            return Err(BlockError::BadSize {
                len: payload.len(),
                size: block.size(),
            });
        }
        let offset = usize::from(block.num) * block.size();
        if offset != self.body.len() {
            return Err(BlockError::Incomplete {
                num: block.num,
                expected: self.body.len(),
                got: offset,
            });
        }
        if offset + payload.len() > self.max_body {
            return Err(BlockError::TooLarge { max: self.max_body });
        }
        self.body.extend_from_slice(payload);
        if !block.more {
            return Ok(Next::Done(std::mem::take(&mut self.body)));
        }
        let num = u16::try_from(self.body.len() / block.size())
            .map_err(|_| BlockError::TooLarge { max: offset })?;
        Ok(Next::Fetch(value(num, false, block.size_exponent)))
    }

    /// Bytes taken so far.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// True before the first block.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

/// A request body sent block by block (Block1), each block once the peer's 2.31 Continue for
/// the one before it came; the peer may ask for a smaller size on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    offset: usize,
    szx: u8,
}

impl Upload {
    /// Starts at the first block, of size `1 << (szx + 4)`.
    pub fn new(szx: u8) -> Upload {
        Upload {
            offset: 0,
            szx: szx.min(6),
        }
    }

    /// The block to send now: its Block1 value and its part of `body`.
    pub fn block<'a>(&self, body: &'a [u8]) -> (BlockValue, &'a [u8]) {
        let size = 1usize << (self.szx + 4);
        let start = self.offset.min(body.len());
        let end = (start + size).min(body.len());
        let num = u16::try_from(start / size).unwrap_or(u16::MAX);
        (value(num, end < body.len(), self.szx), &body[start..end])
    }

    /// The peer took the block just sent (its 2.31 Continue carried `echo`, the Block1 value
    /// it answers with): moves past it, at the smaller size if the peer asked for one. True
    /// when a block of `body_len` bytes is left to send.
    pub fn advance(&mut self, body_len: usize, echo: Option<&BlockValue>) -> bool {
        let size = 1usize << (self.szx + 4);
        self.offset = (self.offset + size).min(body_len);
        if let Some(echo) = echo {
            // Offsets are multiples of the old size, so of any smaller one too.
            self.szx = self.szx.min(echo.size_exponent);
        }
        self.offset < body_len
    }
}

/// The size exponent (SZX) of the largest block size not above `max_block_size`
/// (16..=1024).
pub fn szx_for(max_block_size: usize) -> u8 {
    let mut szx = 6u8;
    while szx > 0 && (1usize << (szx + 4)) > max_block_size {
        szx -= 1;
    }
    szx
}

/// Block `num` of size `1 << (szx + 4)` of `body`, and whether more follow; `None` when the
/// block starts past the end (4.02 Bad Option for a GET).
pub fn slice(body: &[u8], num: u16, szx: u8) -> Option<(&[u8], bool)> {
    let size = 1usize << (szx.min(6) + 4);
    let start = usize::from(num) * size;
    if start > body.len() || (start == body.len() && num > 0) {
        return None;
    }
    let end = (start + size).min(body.len());
    Some((&body[start..end], end < body.len()))
}

/// The Block1/Block2 option value for block `num` of size exponent `szx`.
pub fn value(num: u16, more: bool, szx: u8) -> BlockValue {
    BlockValue {
        num,
        more,
        size_exponent: szx.min(6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Duration = Duration::from_secs(247);

    #[test]
    fn blocks_in_order_reassemble_the_body() {
        let t0 = Instant::now();
        let mut a = Assembler::new(4096, 4, LIFE);
        let body: Vec<u8> = (0..100u8).collect();
        let mut steps = Vec::new();
        for (num, chunk) in body.chunks(32).enumerate() {
            let more = (num + 1) * 32 < body.len();
            steps.push(a.accept("k", &value(num as u16, more, 1), chunk, t0));
        }
        assert_eq!(steps.pop(), Some(Ok(Step::Complete(body))));
        assert!(steps.iter().all(|s| *s == Ok(Step::Continue)));
        assert!(a.is_empty());
    }

    #[test]
    fn a_client_may_continue_with_a_smaller_block_size() {
        let t0 = Instant::now();
        let mut a = Assembler::new(4096, 4, LIFE);
        assert_eq!(
            a.accept(1, &value(0, true, 2), &[1; 64], t0),
            Ok(Step::Continue)
        );
        // now 32-byte blocks: offset 64 is block 2
        assert_eq!(
            a.accept(1, &value(2, true, 1), &[2; 32], t0),
            Ok(Step::Continue)
        );
        assert_eq!(
            a.accept(1, &value(3, false, 1), &[3; 5], t0),
            Ok(Step::Complete(
                [vec![1; 64], vec![2; 32], vec![3; 5]].concat()
            ))
        );
    }

    #[test]
    fn gaps_oversize_and_bad_sizes_are_refused_and_forget_the_transfer() {
        let t0 = Instant::now();
        let mut a = Assembler::new(96, 4, LIFE);
        assert_eq!(
            a.accept(1, &value(0, true, 1), &[0; 32], t0),
            Ok(Step::Continue)
        );
        assert_eq!(
            a.accept(1, &value(2, true, 1), &[0; 32], t0),
            Err(BlockError::Incomplete {
                num: 2,
                expected: 32,
                got: 64
            })
        );
        assert!(a.is_empty());
        assert_eq!(
            a.accept(1, &value(1, false, 1), &[0; 3], t0),
            Err(BlockError::Incomplete {
                num: 1,
                expected: 0,
                got: 32
            })
        );
        a.accept(1, &value(0, true, 1), &[0; 32], t0).unwrap();
        assert_eq!(
            a.accept(1, &value(1, true, 1), &[0; 32], t0),
            Ok(Step::Continue)
        );
        assert_eq!(
            a.accept(1, &value(2, false, 1), &[0; 33], t0),
            Err(BlockError::TooLarge { max: 96 })
        );
        assert_eq!(
            a.accept(2, &value(0, true, 1), &[0; 31], t0),
            Err(BlockError::BadSize { len: 31, size: 32 })
        );
    }

    #[test]
    fn transfers_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut a = Assembler::new(4096, 2, LIFE);
        for k in 0..3 {
            a.accept(k, &value(0, true, 0), &[0; 16], t0 + Duration::from_secs(k))
                .unwrap();
        }
        assert_eq!(a.len(), 2);
        assert!(a
            .accept(0, &value(1, false, 0), &[0; 1], t0 + Duration::from_secs(3))
            .is_err());
        a.accept(9, &value(0, true, 0), &[0; 16], t0 + LIFE * 2)
            .unwrap();
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn a_servers_answers_continue_at_its_size_and_refuse_with_the_code_the_rfc_gives() {
        let t0 = Instant::now();
        let mut a = Assembler::new(100, 4, LIFE);
        // A client sending 64-byte blocks to a server that takes 32: Continue at 32.
        assert_eq!(
            a.answer(1, &value(0, true, 2), &[0; 64], 32, t0),
            Block1Answer::Continue(value(0, true, 1))
        );
        assert_eq!(
            a.answer(1, &value(2, false, 1), &[1; 3], 32, t0),
            Block1Answer::Complete([vec![0; 64], vec![1; 3]].concat())
        );
        let refused = |a: &mut Assembler<i32>, b: BlockValue, n: usize| match a.answer(
            2,
            &b,
            &vec![0; n],
            1024,
            t0,
        ) {
            Block1Answer::Refused { code, size1, .. } => Some((code, size1)),
            _ => None,
        };
        assert_eq!(
            refused(&mut a, value(0, false, 6), 101),
            Some((ResponseType::RequestEntityTooLarge, Some(100)))
        );
        assert_eq!(
            refused(&mut a, value(1, true, 1), 32),
            Some((ResponseType::RequestEntityIncomplete, None))
        );
        assert_eq!(
            refused(&mut a, value(0, true, 1), 31),
            Some((ResponseType::BadRequest, None))
        );
    }

    #[test]
    fn a_download_takes_blocks_in_order_and_asks_for_the_next() {
        let body: Vec<u8> = (0..=255u8).cycle().take(2500).collect();
        let mut d = Download::new(4096);
        let mut num = 0;
        let out = loop {
            let (chunk, more) = slice(&body, num, 6).unwrap();
            match d.take(&value(num, more, 6), chunk).unwrap() {
                Next::Fetch(next) => {
                    assert_eq!(next, value(num + 1, false, 6));
                    num = next.num;
                }
                Next::Done(all) => break all,
            }
        };
        assert_eq!(out, body);
        assert!(d.is_empty());
    }

    #[test]
    fn a_download_refuses_gaps_short_blocks_bert_and_too_much() {
        let mut d = Download::new(100);
        assert_eq!(
            d.take(&value(1, true, 1), &[0; 32]),
            Err(BlockError::Incomplete {
                num: 1,
                expected: 0,
                got: 32
            })
        );
        assert_eq!(
            d.take(&value(0, true, 1), &[0; 31]),
            Err(BlockError::BadSize { len: 31, size: 32 })
        );
        let bert = BlockValue {
            num: 0,
            more: false,
            size_exponent: 7,
        };
        assert!(d.take(&bert, &[0; 10]).is_err());
        assert_eq!(
            d.take(&value(0, true, 6), &[0; 1024]),
            Err(BlockError::TooLarge { max: 100 })
        );
        assert_eq!(
            d.take(&value(0, true, 1), &[0; 32]),
            Ok(Next::Fetch(value(1, false, 1)))
        );
        assert_eq!(d.len(), 32);
    }

    #[test]
    fn an_upload_sends_every_byte_once_and_follows_a_smaller_size() {
        let body: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let mut up = Upload::new(6);
        let mut sent = Vec::new();
        let (b, part) = up.block(&body);
        assert_eq!((b.num, b.more, b.size()), (0, true, 1024));
        sent.extend_from_slice(part);
        // The peer wants 256-byte blocks from now on.
        assert!(up.advance(body.len(), Some(&value(0, true, 4))));
        let mut nums = Vec::new();
        loop {
            let (b, part) = up.block(&body);
            assert_eq!(usize::from(b.num) * b.size(), sent.len());
            nums.push(b.num);
            sent.extend_from_slice(part);
            if !b.more {
                break;
            }
            assert!(up.advance(body.len(), Some(&b)));
        }
        assert!(!up.advance(body.len(), None));
        assert_eq!(sent, body);
        assert_eq!(nums.first(), Some(&4));
        assert_eq!(nums.last(), Some(&11));
    }

    #[test]
    fn slicing_covers_the_body_exactly() {
        let body: Vec<u8> = (0..=255u8).cycle().take(2500).collect();
        let szx = szx_for(1024);
        assert_eq!(szx, 6);
        assert_eq!(szx_for(100), 2);
        let mut out = Vec::new();
        let mut num = 0;
        loop {
            let (chunk, more) = slice(&body, num, szx).unwrap();
            out.extend_from_slice(chunk);
            if !more {
                break;
            }
            num += 1;
        }
        assert_eq!(out, body);
        assert_eq!(num, 2);
        assert!(slice(&body, 3, szx).is_none());
        assert_eq!(slice(&[], 0, szx), Some((&[][..], false)));
    }
}
