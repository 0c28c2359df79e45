//! Poll planning: the read requests one poll of a device makes.
//!
//! Owns merging (adjacent points of one table in one request, as long as the request stays
//! within the device's maximum PDU and the registers read between two points stay within the
//! maximum gap) and splitting (a request the device answers with an exception is cut in halves
//! by points, so a rejected point ends up alone and the rest keeps being read). Never sends a
//! request and never decides when a poll happens.

use crate::point::{Point, Table};
use crate::value::{decode_bit, decode_registers, ShortRead, Value};

/// How far merging may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Registers one read may ask for (the protocol's maximum is 125).
    pub max_registers: u16,
    /// Coils or discrete inputs one read may ask for (the protocol's maximum is 2000).
    pub max_bits: u16,
    /// Unused registers (or bits) a merged read may span between two points.
    pub max_gap: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_registers: 125,
            max_bits: 2000,
            max_gap: 10,
        }
    }
}

impl Limits {
    fn max_count(&self, table: Table) -> u32 {
        u32::from(if table.is_bits() {
            self.max_bits
        } else {
            self.max_registers
        })
        .max(1)
    }
}

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Which table (function code 1, 2, 3 or 4).
    pub table: Table,
    /// First address.
    pub address: u16,
    /// Registers or bits.
    pub count: u16,
    /// Indexes into the device's points, by address.
    pub points: Vec<usize>,
}

impl Read {
    fn covering(table: Table, points: &[usize], all: &[Point]) -> Read {
        let start = points
            .iter()
            .map(|i| all[*i].address)
            .min()
            .unwrap_or_default();
        let end = points
            .iter()
            .map(|i| all[*i].end())
            .max()
            .unwrap_or(u32::from(start));
        Read {
            table,
            address: start,
            count: u16::try_from(end - u32::from(start)).unwrap_or(u16::MAX),
            points: points.to_vec(),
        }
    }
}

/// What a read returned.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// Registers from the read's first address.
    Registers(&'a [u16]),
    /// Bits from the read's first address.
    Bits(&'a [bool]),
}

/// The reads of one device, in table and address order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    reads: Vec<Read>,
}

impl Plan {
    /// Plans the reads of `points` within `limits`.
    pub fn new(points: &[Point], limits: Limits) -> Plan {
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|i| (points[*i].table, points[*i].address, points[*i].end()));
        let mut reads: Vec<Read> = Vec::new();
        for i in order {
            let p = &points[i];
            let merged = reads.last_mut().is_some_and(|r| {
                if r.table != p.table {
                    return false;
                }
                let start = u32::from(r.address);
                let end = start + u32::from(r.count);
                let gap = u32::from(p.address).saturating_sub(end);
                let new_end = end.max(p.end());
                if gap > u32::from(limits.max_gap) || new_end - start > limits.max_count(p.table) {
                    return false;
                }
                r.count = u16::try_from(new_end - start).unwrap_or(u16::MAX);
                r.points.push(i);
                true
            });
            if !merged {
                reads.push(Read::covering(p.table, &[i], points));
            }
        }
        Plan { reads }
    }

    /// The reads, in the order a poll makes them.
    pub fn reads(&self) -> &[Read] {
        &self.reads
    }

    /// Number of reads one poll makes.
    pub fn len(&self) -> usize {
        self.reads.len()
    }

    /// Whether the device has no points.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    /// The device rejected read `index` with an exception: replaces it by two reads, each with
    /// half its points, at `index` and `index + 1`. Returns false (and changes nothing) when
    /// the read serves one point: that point is the one the device rejects.
    pub fn split(&mut self, index: usize, points: &[Point]) -> bool {
        let Some(read) = self.reads.get(index) else {
            return false;
        };
        if read.points.len() < 2 {
            return false;
        }
        let half = read.points.len() / 2;
        let first = Read::covering(read.table, &read.points[..half], points);
        let second = Read::covering(read.table, &read.points[half..], points);
        self.reads[index] = first;
        self.reads.insert(index + 1, second);
        true
    }
}

/// The values of a read's points from what the device returned. A point whose registers the
/// answer does not cover gets [`ShortRead`].
pub fn extract(
    read: &Read,
    points: &[Point],
    data: Data<'_>,
) -> Vec<(usize, Result<Value, ShortRead>)> {
    read.points
        .iter()
        .map(|&i| {
            let p = &points[i];
            let from = usize::from(p.address - read.address.min(p.address));
            let n = usize::from(p.count());
            let value = match data {
                Data::Registers(regs) => match regs.get(from..from + n) {
                    Some(slice) => decode_registers(p, slice),
                    None => Err(ShortRead {
                        expected: from + n,
                        got: regs.len(),
                    }),
                },
                Data::Bits(bits) => match bits.get(from) {
                    Some(bit) => Ok(decode_bit(*bit)),
                    None => Err(ShortRead {
                        expected: from + 1,
                        got: bits.len(),
                    }),
                },
            };
            (i, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::DataType;
    use proptest::prelude::*;

    fn holding(name: &str, address: u16, t: DataType) -> Point {
        Point::new(name, Table::HoldingRegister, address, t)
    }

    #[test]
    fn adjacent_points_merge_into_one_read() {
        let points = vec![
            holding("a", 0, DataType::F32),
            holding("b", 2, DataType::U16),
            holding("c", 3, DataType::U64),
            Point::new("d", Table::Coil, 0, DataType::Bool),
            Point::new("e", Table::Coil, 1, DataType::Bool),
        ];
        let plan = Plan::new(&points, Limits::default());
        assert_eq!(plan.len(), 2);
        assert_eq!(plan.reads()[0].table, Table::Coil);
        assert_eq!((plan.reads()[1].address, plan.reads()[1].count), (0, 7));
        assert_eq!(plan.reads()[1].points, vec![0, 1, 2]);
    }

    #[test]
    fn the_gap_and_the_pdu_limit_end_a_read() {
        let points = vec![
            holding("a", 0, DataType::U16),
            holding("b", 11, DataType::U16),
            holding("c", 23, DataType::U16),
        ];
        let plan = Plan::new(&points, Limits::default());
        // 0 -> 11 leaves a gap of 10 (1..=10): merged; 11 -> 23 a gap of 11: a new read.
        assert_eq!(plan.len(), 2);
        assert_eq!((plan.reads()[0].address, plan.reads()[0].count), (0, 12));
        let tight = Limits {
            max_registers: 4,
            ..Limits::default()
        };
        let points: Vec<_> = (0..10)
            .map(|i| holding(&format!("p{i}"), i, DataType::U16))
            .collect();
        let plan = Plan::new(&points, tight);
        assert_eq!(plan.len(), 3);
        assert!(plan.reads().iter().all(|r| r.count <= 4));
    }

    #[test]
    fn a_rejected_read_splits_until_the_bad_point_stands_alone() {
        let points: Vec<_> = (0..8)
            .map(|i| holding(&format!("p{i}"), i * 2, DataType::U16))
            .collect();
        let mut plan = Plan::new(&points, Limits::default());
        assert_eq!(plan.len(), 1);
        // The device refuses any read that includes register 10 (point p5).
        let refuses =
            |r: &Read| u32::from(r.address) <= 10 && 10 < u32::from(r.address) + u32::from(r.count);
        let mut i = 0;
        let mut rejected = Vec::new();
        while i < plan.len() {
            if refuses(&plan.reads()[i]) {
                if plan.split(i, &points) {
                    continue;
                }
                rejected.extend(plan.reads()[i].points.clone());
            }
            i += 1;
        }
        assert_eq!(rejected, vec![5]);
        assert!(
            plan.len() <= 4,
            "split in halves, not one read per point: {plan:?}"
        );
        let served: usize = plan.reads().iter().map(|r| r.points.len()).sum();
        assert_eq!(served, 8);
    }

    #[test]
    fn extraction_slices_each_point_out_of_the_answer() {
        let points = vec![
            holding("a", 10, DataType::U16),
            holding("b", 12, DataType::U32),
        ];
        let plan = Plan::new(&points, Limits::default());
        let read = &plan.reads()[0];
        assert_eq!((read.address, read.count), (10, 4));
        let values = extract(read, &points, Data::Registers(&[7, 0, 0, 9]));
        assert_eq!(values[0], (0, Ok(Value::UInt(7))));
        assert_eq!(values[1], (1, Ok(Value::UInt(9))));
        let short = extract(read, &points, Data::Registers(&[7, 0]));
        assert!(
            short[1].1.is_err(),
            "a short answer is an error for the points it misses"
        );
    }

    proptest! {
        #[test]
        fn every_point_is_read_once_within_the_limits(
            addrs in proptest::collection::btree_set(0u16..2000, 1..80),
            max_registers in 4u16..=125,
            max_gap in 0u16..20,
        ) {
            let points: Vec<_> = addrs.iter().enumerate()
                .map(|(i, a)| holding(&format!("p{i}"), *a * 4, DataType::U32))
                .collect();
            let limits = Limits { max_registers, max_bits: 2000, max_gap };
            let plan = Plan::new(&points, limits);
            let mut seen = vec![0; points.len()];
            for r in plan.reads() {
                prop_assert!(r.count <= max_registers);
                for &i in &r.points {
                    seen[i] += 1;
                    prop_assert!(r.address <= points[i].address);
                    prop_assert!(points[i].end() <= u32::from(r.address) + u32::from(r.count));
                }
            }
            prop_assert!(seen.iter().all(|n| *n == 1));
        }
    }
}
