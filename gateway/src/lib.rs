//! Holdfast: the edge gateway as a library; `main.rs` is a thin CLI over it.
//!
//! Layout: `config` turns TOML + environment into typed config, `auth` decides who may connect,
//! `broker` is the MQTT broker (router, sessions, listeners, connections, `$SYS`), `bridge` the
//! store-and-forward links to cloud brokers, `ops` the operations service layer (reload, and
//! what `holdfast ctl` and the web UI call), `ctl` the control socket and its client, `webhook` posts broker events to HTTP endpoints, `supervise`
//! is the board task (watchdog fed only while healthy, LEDs, systemd, board `$SYS`), `app`
//! wires them together and owns shutdown.
#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_docs, missing_debug_implementations)]
#![warn(clippy::await_holding_lock)]

pub mod app;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod clock;
pub mod coap;
pub mod config;
pub mod config_file;
pub mod ctl;
pub mod dtls;
pub mod file_replace;
pub mod last_good;
pub mod log_tail;
pub mod logging;
pub mod lwm2m;
pub mod modbus;
pub mod ops;
pub mod serial;
pub mod supervise;
pub mod trace;
pub mod udp;
pub mod web;
pub mod webhook;
