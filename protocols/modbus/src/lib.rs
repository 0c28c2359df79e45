//! Sans-IO Modbus for the gateway's pollers: plain functions over registers, bits and structs,
//! tested without a device.
//!
//! - [`point`]: what a register map says about one value (table, address, type, word and byte
//!   order, bit, scale, offset, unit) and the checks a map must pass (overlaps, sizes).
//! - [`value`]: registers and bits to typed values and back (for writes), with range checks.
//! - [`plan`]: which read requests one poll of a device makes: adjacent points merged up to the
//!   device's maximum PDU and a maximum gap, and a request that the device rejects split in
//!   halves until only the rejected point stands alone.
//! - [`report`]: publish-on-change with a deadband, and the JSON of a sample.
//! - [`line`]: serial line timing (the RTU inter-frame gap, the time a frame takes).
//!
//! Nothing here does I/O or reads a clock: the caller passes times in.

pub mod line;
pub mod plan;
pub mod point;
pub mod report;
pub mod value;
