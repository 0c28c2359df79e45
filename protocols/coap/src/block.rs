//! Block-wise transfer (RFC 7959): Block1 bodies sent to the server reassembled, Block2
//! bodies sent by the server sliced.
//!
//! Owns the partial Block1 bodies, keyed by whatever names one transfer (the gateway uses the
//! client and the request URI), each at most `max_body` bytes, at most `max_transfers` at
//! once (the oldest is dropped for a new one), each forgotten after `lifetime` without a
//! block. Blocks are placed by offset (num x size), so a client that switches to the smaller
//! size the server asked for continues where it was. Never builds packets.

pub use coap_lite::block_handler::BlockValue;
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
