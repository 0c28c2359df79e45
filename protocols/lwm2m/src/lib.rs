//! Sans-IO LwM2M for the gateway's LwM2M server: plain functions over bytes and strings,
//! tested without sockets.
//!
//! - [`tlv`]: the OMA TLV content format (11542): decoding with bounded nesting, encoding,
//!   and typed values (integers signed and minimally encoded, as the spec says).
//! - [`command`]: EMQX's downlink commands as CoAP requests, and the device's answers as EMQX's
//!   response JSON with the content decoded by format and object model.
//! - [`link`]: the CoRE link format (RFC 6690) of registrations and Discover answers.
//! - [`model`]: object definitions from OMA registry XML (built-in: 0, 1, 3, 4, 5, 6, 3303,
//!   3304, 3311; more from files), and resource values converted by type.
//! - [`registry`]: Register, Update, De-register and lifetime expiry, and EMQX's JSON for them.
//! - [`senml`]: SenML JSON (110) and SenML CBOR (112) records to paths and values (EMQX passes
//!   them on as base64 blobs; we decode them).
//!
//! - [`fuzz`]: the fuzz targets' entry points, also run on the committed seeds by the tests.
//!
//! Nothing here does I/O or reads a clock.

pub mod command;
pub mod fuzz;
pub mod link;
pub mod model;
pub mod registry;
pub mod senml;
pub mod tlv;
