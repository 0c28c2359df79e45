//! One point of a register map: where a value lives on the device and how its registers read.
//!
//! Owns the point's shape and the rules a map must satisfy (a type fits its table, an address
//! range fits the 16-bit address space, points do not overlap unless they are bits of one
//! register). Never talks to a device and never decides when a point is read.

use std::fmt;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Read/write bits (function codes 1, 5, 15): `coil`.
    Coil,
    /// Read-only bits (function code 2): `discrete`.
    DiscreteInput,
    /// Read-only registers (function code 4): `input`.
    InputRegister,
    /// Read/write registers (function codes 3, 6, 16, 22): `holding`.
    HoldingRegister,
}

impl Table {
    /// Parses the config word (`coil`, `discrete`, `input`, `holding`).
    pub fn parse(text: &str) -> Option<Table> {
        match text {
            "coil" => Some(Table::Coil),
            "discrete" => Some(Table::DiscreteInput),
            "input" => Some(Table::InputRegister),
            "holding" => Some(Table::HoldingRegister),
            _ => None,
        }
    }

    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete",
            Table::InputRegister => "input",
            Table::HoldingRegister => "holding",
        }
    }

    /// Whether the table holds bits (coils, discrete inputs) rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// Whether a master may write it.
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::HoldingRegister)
    }
}

/// How the registers of a value are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// A coil or discrete input, or one bit of a register (`bit`).
    Bool,
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Four registers, unsigned.
    U64,
    /// Four registers, two's complement.
    I64,
    /// Two registers, IEEE 754 single.
    F32,
    /// Four registers, IEEE 754 double.
    F64,
    /// `n` registers of two bytes each, NUL- or space-padded text.
    String(u16),
}

impl DataType {
    /// Parses the config word; a string's length (in registers) comes from `count`.
    pub fn parse(text: &str, string_registers: u16) -> Option<DataType> {
        Some(match text {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            "string" => DataType::String(string_registers),
            _ => return None,
        })
    }

    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String(_) => "string",
        }
    }

    /// Registers the type takes (a bool: one bit, or one register with `bit`).
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String(n) => n,
        }
    }

    /// Whether the value is a number (scale, offset and deadband apply).
    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::String(_))
    }
}

/// Order of the registers of a multi-register value, or of the two bytes of each register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Most significant first (Modbus's own order).
    #[default]
    Big,
    /// Least significant first.
    Little,
}

impl Order {
    /// Parses `big` or `little`.
    pub fn parse(text: &str) -> Option<Order> {
        match text {
            "big" => Some(Order::Big),
            "little" => Some(Order::Little),
            _ => None,
        }
    }
}

/// One named value of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Name: the last topic level (`modbus/{device}/{point}`).
    pub name: String,
    /// Which table.
    pub table: Table,
    /// Protocol address (0-based, as on the wire).
    pub address: u16,
    /// How its registers read.
    pub data_type: DataType,
    /// Order of the registers of a multi-register value.
    pub word_order: Order,
    /// Order of the two bytes within each register.
    pub byte_order: Order,
    /// For a bool in a register: which bit (0 = least significant).
    pub bit: Option<u8>,
    /// The engineering value is `raw * scale + offset`.
    pub scale: f64,
    /// See `scale`.
    pub offset: f64,
    /// Unit shown with the value (`V`, `degC`).
    pub unit: Option<String>,
    /// Whether MQTT may write it (`modbus/{device}/set/{point}`).
    pub writable: bool,
    /// A numeric value is published on change only when it moved more than this.
    pub deadband: f64,
    /// Lowest value a write may set (engineering units), if any.
    pub min: Option<f64>,
    /// Highest value a write may set (engineering units), if any.
    pub max: Option<f64>,
}

impl Point {
    /// A point with the defaults: big-endian, no bit, scale 1, offset 0, read-only.
    pub fn new(name: impl Into<String>, table: Table, address: u16, data_type: DataType) -> Point {
        Point {
            name: name.into(),
            table,
            address,
            data_type,
            word_order: Order::Big,
            byte_order: Order::Big,
            bit: None,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            writable: false,
            deadband: 0.0,
            min: None,
            max: None,
        }
    }

    /// Registers (or bits) the point takes.
    pub fn count(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type.registers()
        }
    }

    /// One past the last address, as u32 (a point may end at 65536).
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count())
    }

    /// Whether scale or offset change the raw value.
    pub fn is_scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }

    /// What is wrong with the point on its own, if anything.
    pub fn check(&self) -> Result<(), MapError> {
        let fail = |reason: String| {
            Err(MapError {
                point: self.name.clone(),
                reason,
            })
        };
        if self.table.is_bits() && self.data_type != DataType::Bool {
            return fail(format!(
                "a {} holds one bit: its type must be \"bool\", not {:?}",
                self.table.as_str(),
                self.data_type.as_str()
            ));
        }
        if self.bit.is_some() && self.table.is_bits() {
            return fail(
                "\"bit\" selects a bit of a register; a coil or discrete input is already one bit"
                    .into(),
            );
        }
        if let Some(bit) = self.bit {
            if bit > 15 {
                return fail(format!("bit {bit} is outside a 16-bit register (0..=15)"));
            }
            if self.data_type != DataType::Bool {
                return fail("a point with \"bit\" must have type \"bool\"".into());
            }
        }
        if !self.table.is_bits() && self.data_type == DataType::Bool && self.bit.is_none() {
            return fail(format!(
                "a bool in a {} register needs \"bit\" (0..=15)",
                self.table.as_str()
            ));
        }
        if let DataType::String(n) = self.data_type {
            if n == 0 || n > 125 {
                return fail(format!(
                    "a string takes 1..=125 registers (\"count\"), got {n}"
                ));
            }
        }
        if self.end() > 65_536 {
            return fail(format!(
                "address {} + {} registers runs past the last address 65535",
                self.address,
                self.count()
            ));
        }
        if self.writable && !self.table.is_writable() {
            return fail(format!(
                "a {} cannot be written (only coils and holding registers)",
                self.table.as_str()
            ));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return fail(format!(
                "scale must be a finite non-zero number, got {}",
                self.scale
            ));
        }
        if !self.offset.is_finite() {
            return fail(format!("offset must be finite, got {}", self.offset));
        }
        if !(self.deadband.is_finite() && self.deadband >= 0.0) {
            return fail(format!(
                "deadband must be zero or more, got {}",
                self.deadband
            ));
        }
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                return fail(format!("min {min} is above max {max}"));
            }
        }
        Ok(())
    }
}

/// A point that does not fit the map, or two that collide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("point {point:?}: {reason}")]
pub struct MapError {
    /// The point at fault (the later one, for a collision).
    pub point: String,
    /// Why.
    pub reason: String,
}

/// Checks a device's map as a whole: names unique, no two points sharing a register or bit
/// (bits of one register may share it). Returns every problem, each naming the later point.
pub fn check_map(points: &[Point]) -> Vec<(usize, MapError)> {
    let mut problems = Vec::new();
    for (i, p) in points.iter().enumerate() {
        if let Err(e) = p.check() {
            problems.push((i, e));
            continue;
        }
        for q in &points[..i] {
            if q.name == p.name {
                problems.push((
                    i,
                    MapError {
                        point: p.name.clone(),
                        reason: "the name is used twice on this device".into(),
                    },
                ));
                break;
            }
            if let Some(reason) = collision(q, p) {
                problems.push((
                    i,
                    MapError {
                        point: p.name.clone(),
                        reason,
                    },
                ));
                break;
            }
        }
    }
    problems
}

/// Why `later` collides with `earlier`, if it does.
fn collision(earlier: &Point, later: &Point) -> Option<String> {
    if earlier.table != later.table || earlier.check().is_err() {
        return None;
    }
    let overlap =
        u32::from(earlier.address) < later.end() && u32::from(later.address) < earlier.end();
    if !overlap {
        return None;
    }
    match (earlier.bit, later.bit) {
        (Some(a), Some(b)) if a != b => None,
        (Some(a), Some(b)) if a == b => Some(format!(
            "bit {b} of {} register {} is also point {:?}",
            later.table.as_str(),
            later.address,
            earlier.name
        )),
        _ => Some(format!(
            "{} {}..{} overlaps point {:?} ({}..{})",
            later.table.as_str(),
            later.address,
            later.end() - 1,
            earlier.name,
            earlier.address,
            earlier.end() - 1
        )),
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} {} {})",
            self.name,
            self.table.as_str(),
            self.address,
            self.data_type.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_take_their_register_counts() {
        let p = Point::new("v", Table::HoldingRegister, 10, DataType::F64);
        assert_eq!(p.count(), 4);
        assert_eq!(p.end(), 14);
        let c = Point::new("c", Table::Coil, 10, DataType::Bool);
        assert_eq!(c.count(), 1);
        let s = Point::new("s", Table::InputRegister, 0, DataType::String(8));
        assert_eq!(s.count(), 8);
    }

    #[test]
    fn a_point_that_does_not_fit_its_table_is_refused() {
        let bad = [
            Point::new("a", Table::Coil, 0, DataType::U16),
            Point::new("b", Table::HoldingRegister, 0, DataType::Bool),
            Point::new("c", Table::HoldingRegister, 65_535, DataType::U32),
            Point::new("d", Table::InputRegister, 0, DataType::String(0)),
            Point {
                writable: true,
                ..Point::new("e", Table::InputRegister, 0, DataType::U16)
            },
            Point {
                bit: Some(16),
                ..Point::new("f", Table::HoldingRegister, 0, DataType::Bool)
            },
            Point {
                scale: 0.0,
                ..Point::new("g", Table::HoldingRegister, 0, DataType::U16)
            },
        ];
        for p in bad {
            assert!(p.check().is_err(), "{p} passed");
        }
        let end = Point::new("h", Table::HoldingRegister, 65_534, DataType::I16);
        assert!(end.check().is_ok());
        let last = Point::new("i", Table::HoldingRegister, 65_532, DataType::U64);
        assert!(last.check().is_ok(), "a point may end on the last address");
    }

    #[test]
    fn overlapping_points_are_reported_with_the_later_one() {
        let map = vec![
            Point::new("voltage", Table::HoldingRegister, 0, DataType::F32),
            Point::new("current", Table::HoldingRegister, 1, DataType::U16),
            Point::new("other_table", Table::InputRegister, 0, DataType::U16),
            Point::new("voltage", Table::HoldingRegister, 20, DataType::U16),
        ];
        let problems = check_map(&map);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, 1);
        assert!(
            problems[0].1.reason.contains("overlaps point \"voltage\""),
            "{problems:?}"
        );
        assert_eq!(problems[1].0, 3);
        assert!(problems[1].1.reason.contains("twice"));
    }

    #[test]
    fn bits_of_one_register_may_share_it_but_not_a_bit() {
        let bit = |name: &str, b: u8| Point {
            bit: Some(b),
            ..Point::new(name, Table::HoldingRegister, 5, DataType::Bool)
        };
        assert!(check_map(&[bit("a", 0), bit("b", 1), bit("c", 15)]).is_empty());
        let problems = check_map(&[bit("a", 3), bit("b", 3)]);
        assert_eq!(problems.len(), 1);
        let whole = Point::new("w", Table::HoldingRegister, 5, DataType::U16);
        assert_eq!(check_map(&[bit("a", 0), whole]).len(), 1);
    }
}
