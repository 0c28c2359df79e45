//! The command line: subcommands, flags and their defaults.
//!
//! Owns parsing only; it turns flags into `LoadSpec`/`IdleSpec` and never runs anything.

use crate::durable::{DrainSpec, IngestSpec};
use crate::idle::IdleSpec;
use crate::load::LoadSpec;
use crate::stamp::STAMP_LEN;
use clap::{ArgAction, Args, Parser, Subcommand};
use holdfast_mqtt::QoS;
use std::time::Duration;

/// MQTT 3.1.1 load generator for any broker: fan-in, fan-out, latency, idle connections, flood.
///
/// Exit status: 0 when the run completed without connection errors; 1 when it could not be
/// set up (connect refused, subscription refused, bad flags); 3 when it completed but
/// connections were lost or errors were seen (the results are still printed).
#[derive(Debug, Parser)]
#[command(name = "holdfast-bench", version)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// Broker host.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Broker port.
    #[arg(long, global = true, default_value_t = 1883)]
    pub(crate) port: u16,
    /// User name for CONNECT.
    #[arg(long, global = true)]
    pub(crate) username: Option<String>,
    /// Password for CONNECT.
    #[arg(long, global = true)]
    pub(crate) password: Option<String>,
    /// Broker process id: its RSS (VmRSS in /proc/PID/status) is sampled and reported.
    #[arg(long, global = true)]
    pub(crate) pid: Option<u32>,
    /// Print one JSON line of results instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Keep alive sent in CONNECT, seconds (subscribers ping at half of it).
    #[arg(long, global = true, default_value_t = 600)]
    pub(crate) keepalive: u16,
    /// Subscribers connect with clean session 0 (a persistent session the broker keeps after
    /// they leave); publishers stay clean.
    #[arg(long, global = true)]
    pub(crate) persistent_subs: bool,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long, global = true)]
    pub(crate) threads: Option<usize>,
    /// Connect over TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long, global = true)]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    /// Name expected in the broker's certificate (default: --host).
    #[arg(long, global = true)]
    pub(crate) tls_server_name: Option<String>,
    /// Resume TLS sessions (rustls' client session cache); default: every handshake is full.
    #[arg(long, global = true)]
    pub(crate) tls_resume: bool,
    /// Connect over WebSocket (`GET /mqtt`, subprotocol `mqtt`); with --tls-ca, over WSS.
    #[arg(long, global = true)]
    pub(crate) ws: bool,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// N publishers -> 1 subscriber on bench/#; publisher i publishes on bench/{i}.
    Fanin(FaninArgs),
    /// 1 publisher -> N subscribers on bench/fanout; reports deliveries/s.
    Fanout(FanoutArgs),
    /// Fixed-rate open loop from a few publishers to 1 subscriber; reports latency.
    Latency(LatencyArgs),
    /// Opens many idle connections and reports the broker's RSS per connection (needs --pid).
    Idle(IdleArgs),
    /// Publishers publish as fast as TCP takes it to a subscriber that reads slowly or not at
    /// all; reports the broker's largest RSS (needs --pid).
    Flood(FloodArgs),
    /// QoS 1 publishers and no subscriber: PUBACK rate and latency, and (with --pid) the bytes
    /// the broker wrote to disk per payload byte. Measures a gateway's durable ingest.
    Ingest(IngestArgs),
    /// One QoS 1 subscriber that counts a backlog of `ingest` messages as it arrives (run it on
    /// the cloud broker while a gateway drains its queue); reports the drain rate.
    Drain(DrainArgs),
    /// Loops of TCP connect + TLS handshake + CONNECT + CONNACK + close (needs --tls-ca);
    /// reports handshakes per second.
    Handshakes(HandshakesArgs),
    /// CoAP devices publishing to `ps/coapbench/{i}` on a gateway's CoAP port, one MQTT
    /// subscriber counting; reports sent, answered and delivered per second, CON latency and
    /// (with --pid) the broker's CPU time per message.
    Coap(CoapArgs),
    /// LwM2M devices registering with a gateway's LwM2M server, each observed through an MQTT
    /// command, then notifying; reports registrations/s, notifications/s delivered to MQTT and
    /// (with --pid) the broker's RSS.
    Lwm2m(Lwm2mArgs),
}

/// `lwm2m` flags.
#[derive(Debug, Args)]
pub(crate) struct Lwm2mArgs {
    /// The gateway's LwM2M (UDP) port, on --host.
    #[arg(long, default_value_t = 5783)]
    pub(crate) lwm2m_port: u16,
    /// Devices (UDP sockets, endpoints hfb-{i}).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) endpoints: u32,
    /// Notifications a second over all devices.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) rate: u64,
    /// How long the devices notify.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
}

/// `coap` flags.
#[derive(Debug, Args)]
pub(crate) struct CoapArgs {
    /// The gateway's CoAP (UDP) port, on --host.
    #[arg(long, default_value_t = 5683)]
    pub(crate) coap_port: u16,
    /// Devices (UDP sockets, each its own client id).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) devices: u32,
    /// Send CON requests (each answered by a piggybacked 2.04) instead of NON.
    #[arg(long)]
    pub(crate) confirmable: bool,
    /// CON requests outstanding per device (RFC 7252's NSTART is 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) window: u16,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// NON messages a second over all devices (0: as fast as the sockets take them).
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Send No-Response "not interested in 2.xx" (RFC 7967) with each NON: fire-and-forget
    /// telemetry, answered only when refused (as an MQTT QoS 0 publish).
    #[arg(long, conflicts_with = "confirmable")]
    pub(crate) no_response: bool,
}

/// `handshakes` flags.
#[derive(Debug, Args)]
pub(crate) struct HandshakesArgs {
    /// Loops running at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: u32,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
}

/// `ingest` flags.
#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Number of publishers; publisher i publishes on {topic_prefix}/{i}.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) publishers: u32,
    /// Unacknowledged PUBLISH per publisher.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..65535))]
    pub(crate) inflight: u16,
    /// Payload bytes (at least 24).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// How long to publish (ignored with --count).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Stop after this many acknowledged messages in total (0: run for --duration).
    #[arg(long, default_value_t = 0)]
    pub(crate) count: u64,
    /// Topic prefix.
    #[arg(long, default_value = "sensors")]
    pub(crate) topic_prefix: String,
    /// Run id written into every payload (a `drain` with the same id counts them); default
    /// random.
    #[arg(long)]
    pub(crate) run: Option<u32>,
}

/// `drain` flags.
#[derive(Debug, Args)]
pub(crate) struct DrainArgs {
    /// Filter to subscribe to at QoS 1.
    #[arg(long, default_value = "#")]
    pub(crate) filter: String,
    /// Distinct messages to wait for.
    #[arg(long)]
    pub(crate) expect: u64,
    /// Publishers of the `ingest` run.
    #[arg(long, default_value_t = 100)]
    pub(crate) publishers: u32,
    /// Run id of the `ingest` run.
    #[arg(long)]
    pub(crate) run: u32,
    /// Stop when nothing arrived for this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) idle_timeout: Duration,
    /// Stop when the first message has not arrived after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) start_timeout: Duration,
    /// QoS of the subscription: 1 (default) or 0, which costs the cloud broker least.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
}

/// Flags of every message load.
#[derive(Debug, Args)]
pub(crate) struct MsgArgs {
    /// QoS of the publishes and the subscription: 0 or 1.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
    /// Payload bytes (at least 24: run id, publisher id, sequence, send time).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// How long to publish: 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// QoS 1: unacknowledged PUBLISH per publisher.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) inflight: u16,
    /// After publishing stops, how long to wait for messages still in flight.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) drain: Duration,
}

/// `fanin` flags.
#[derive(Debug, Args)]
pub(crate) struct FaninArgs {
    /// Number of publishers.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) publishers: u32,
    /// Total messages/s offered; 0 = as fast as the closed loop allows.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Closed loop: publishers pause while this many messages are sent but not received
    /// (0 = no limit).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) max_outstanding: u64,
    #[command(flatten)]
    pub(crate) msg: MsgArgs,
}

/// `fanout` flags.
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    /// Number of subscribers.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) subscribers: u32,
    /// Messages/s offered; 0 = as fast as the closed loop allows.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Closed loop: the publisher pauses while this many deliveries are outstanding
    /// (0 = no limit).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) max_outstanding: u64,
    #[command(flatten)]
    pub(crate) msg: MsgArgs,
}

/// `latency` flags.
#[derive(Debug, Args)]
pub(crate) struct LatencyArgs {
    /// Number of publishers.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) publishers: u32,
    /// Total messages/s, spread evenly over the publishers.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rate: u64,
    #[command(flatten)]
    pub(crate) msg: MsgArgs,
}

/// `flood` flags.
#[derive(Debug, Args)]
pub(crate) struct FloodArgs {
    /// Number of publishers.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) publishers: u32,
    /// Whether the subscriber reads at all.
    #[arg(long, default_value_t = false, action = ArgAction::Set)]
    pub(crate) sub_reads: bool,
    /// When it reads: at most this many messages/s (0 = as fast as it can).
    #[arg(long, default_value_t = 0)]
    pub(crate) sub_rate: u64,
    #[command(flatten)]
    pub(crate) msg: MsgArgs,
}

/// `idle` flags.
#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: u32,
    /// How long they stay idle before the broker's RSS is read.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub(crate) settle: Duration,
    /// Connection attempts in flight at once. Kept below the usual listen backlogs (mosquitto
    /// 100, Rust std 128) so SYN drops and their 1 s retransmit do not dominate conn/s.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
}

impl MsgArgs {
    fn base(&self, mode: &'static str) -> Result<LoadSpec, String> {
        if self.payload < STAMP_LEN {
            return Err(format!(
                "--payload must be at least {STAMP_LEN} bytes (run id, publisher id, sequence, send time)"
            ));
        }
        Ok(LoadSpec {
            mode,
            publishers: 1,
            subscribers: 1,
            shared_topic: None,
            filter: "bench/#".into(),
            qos: if self.qos == 1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            payload: self.payload,
            duration: self.duration,
            rate: 0,
            max_outstanding: None,
            inflight: self.inflight,
            sub_reads: true,
            sub_rate: 0,
            drain: self.drain,
        })
    }
}

/// 0 means "no limit".
fn limit(v: u64) -> Option<u64> {
    (v > 0).then_some(v)
}

impl Command {
    /// The load this command runs, or `None` for `idle`. Err: a flag combination that cannot work.
    pub(crate) fn load_spec(&self) -> Result<Option<LoadSpec>, String> {
        let spec = match self {
            Command::Fanin(a) => LoadSpec {
                publishers: a.publishers,
                rate: a.rate,
                max_outstanding: if a.rate == 0 {
                    limit(a.max_outstanding)
                } else {
                    None
                },
                ..a.msg.base("fanin")?
            },
            Command::Fanout(a) => LoadSpec {
                subscribers: a.subscribers,
                shared_topic: Some("bench/fanout".into()),
                filter: "bench/fanout".into(),
                rate: a.rate,
                max_outstanding: if a.rate == 0 {
                    limit(a.max_outstanding)
                } else {
                    None
                },
                ..a.msg.base("fanout")?
            },
            Command::Latency(a) => LoadSpec {
                publishers: a.publishers,
                rate: a.rate,
                ..a.msg.base("latency")?
            },
            Command::Flood(a) => LoadSpec {
                publishers: a.publishers,
                sub_reads: a.sub_reads,
                sub_rate: a.sub_rate,
                ..a.msg.base("flood")?
            },
            Command::Idle(_)
            | Command::Ingest(_)
            | Command::Drain(_)
            | Command::Handshakes(_)
            | Command::Coap(_)
            | Command::Lwm2m(_) => return Ok(None),
        };
        Ok(Some(spec))
    }

    /// The `ingest` run this command asks for. Err: a flag that cannot work.
    pub(crate) fn ingest_spec(&self) -> Result<Option<IngestSpec>, String> {
        let Command::Ingest(a) = self else {
            return Ok(None);
        };
        if a.payload < STAMP_LEN {
            return Err(format!("--payload must be at least {STAMP_LEN} bytes"));
        }
        Ok(Some(IngestSpec {
            publishers: a.publishers,
            inflight: a.inflight,
            payload: a.payload,
            duration: a.duration,
            count: a.count,
            topic_prefix: a.topic_prefix.clone(),
            run: a.run.unwrap_or_else(crate::load::run_id),
        }))
    }

    /// The `drain` run this command asks for.
    pub(crate) fn drain_spec(&self) -> Option<DrainSpec> {
        let Command::Drain(a) = self else {
            return None;
        };
        Some(DrainSpec {
            filter: a.filter.clone(),
            expect: a.expect,
            publishers: a.publishers,
            run: a.run,
            idle_timeout: a.idle_timeout,
            start_timeout: a.start_timeout,
            qos: if a.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
        })
    }

    /// The idle test this command runs, if it is `idle`.
    pub(crate) fn idle_spec(&self) -> Option<IdleSpec> {
        match self {
            Command::Idle(a) => Some(IdleSpec {
                connections: a.connections,
                settle: a.settle,
                concurrency: a.concurrency,
            }),
            _ => None,
        }
    }

    /// The mode's name, for error lines.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Command::Fanin(_) => "fanin",
            Command::Fanout(_) => "fanout",
            Command::Latency(_) => "latency",
            Command::Idle(_) => "idle",
            Command::Flood(_) => "flood",
            Command::Ingest(_) => "ingest",
            Command::Drain(_) => "drain",
            Command::Handshakes(_) => "handshakes",
            Command::Coap(_) => "coap",
            Command::Lwm2m(_) => "lwm2m",
        }
    }
}

/// "10s", "500ms", "1m", "2h", "1m30s", or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| format!("{s}: {e}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s}: missing unit (ms, s, m, h)"))?;
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s}: bad number {num:?}"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("{s}: unknown unit {unit:?} (ms, s, m, h)")),
        };
        total += Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s}: {e}"))?;
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_take_units_and_combinations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn fanin_defaults_are_a_closed_loop_of_100_publishers() {
        let cli = Cli::try_parse_from(["holdfast-bench", "fanin"]).unwrap();
        let spec = cli.command.load_spec().unwrap().unwrap();
        assert_eq!(spec.publishers, 100);
        assert_eq!(spec.max_outstanding, Some(20_000));
        assert_eq!(spec.payload, 64);
        assert_eq!(spec.qos, QoS::AtMostOnce);
    }

    #[test]
    fn common_flags_go_before_or_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["holdfast-bench", "--port", "1999", "fanout", "--json"]).unwrap();
        assert_eq!(cli.common.port, 1999);
        assert!(cli.common.json);
    }

    #[test]
    fn a_payload_too_small_for_the_stamp_is_refused() {
        let cli = Cli::try_parse_from(["holdfast-bench", "fanin", "--payload", "8"]).unwrap();
        assert!(cli.command.load_spec().is_err());
    }

    #[test]
    fn flood_subscribers_do_not_read_unless_asked() {
        let cli = Cli::try_parse_from(["holdfast-bench", "flood"]).unwrap();
        assert!(!cli.command.load_spec().unwrap().unwrap().sub_reads);
        let cli = Cli::try_parse_from(["holdfast-bench", "flood", "--sub-reads", "true"]).unwrap();
        assert!(cli.command.load_spec().unwrap().unwrap().sub_reads);
    }
}
