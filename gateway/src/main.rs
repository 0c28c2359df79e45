//! The `holdfast` command line: `run`, `check`, `passwd`, `ctl`. `run` stops on SIGTERM/SIGINT and
//! reloads the auth files on SIGHUP.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use holdfast::app::Gateway;
use holdfast::auth::{run_passwd, PasswdCommand};
use holdfast::config::{self, Config};
use holdfast::config_file::probation::{self, Judged};
use holdfast::config_file::{ConfigFile, RestartState};
use holdfast::last_good;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code for a bad configuration (EX_CONFIG-ish; STYLE rule 4 uses 64, EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Holdfast edge gateway: MQTT broker with store-and-forward"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (built-in defaults when no config is given).
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data directory (overrides node.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validate a config file: print every problem with its location, exit non-zero on any.
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print an example config with every key and its default.
    ExampleConfig,
    /// Talk to the running gateway over its control socket ({data_dir}/ctl.sock).
    Ctl {
        /// Control socket (default: {data_dir}/ctl.sock of the config).
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        /// Data directory of the gateway (its socket is DIR/ctl.sock).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        /// Config file whose node.data_dir holds the socket.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Print the raw JSON answer.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Factory reset: remove everything the gateway keeps in its data directory (sessions and
    /// their queues, retained messages, bridge queues, traces), not the config. Refused while
    /// the gateway runs.
    FactoryReset {
        /// Config file whose node.data_dir is reset.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data directory (overrides the config's).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Really do it (nothing is removed without it).
        #[arg(long)]
        yes: bool,
    },
    /// Set the web API's admin password (from a shell on the board, no setup token needed;
    /// typed twice at a prompt, or the first line of standard input).
    WebPasswd {
        /// Config file whose node.data_dir holds the account.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data directory (overrides the config's).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Manage the password file (argon2id hashes).
    Passwd {
        #[command(subcommand)]
        action: PasswdAction,
    },
    /// Resolve a host name the way the gateway does (/etc/hosts, then DNS) and print its
    /// addresses: a check that name resolution works in the static firmware binary.
    #[command(hide = true)]
    Resolve {
        /// Host name, optionally with :PORT.
        host: String,
    },
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Listeners: address, connections, shutdown counts by reason.
    Listeners,
    /// Clients: list, show or kick.
    Clients {
        #[command(subcommand)]
        action: ClientsAction,
    },
    /// Every subscription (client id, filter, QoS).
    Subscriptions,
    /// Retained messages (topic, payload size).
    Retained,
    /// Broker statistics (the numbers $SYS publishes).
    Stats,
    /// Bridges: state, queue, forwarded, reconnects, last error.
    Bridges,
    /// The CoAP gateway: clients (address, mode, observations, idle) and counters.
    Coap,
    /// The LwM2M server: endpoints (lifetime, binding, objects, last seen) and counters.
    Lwm2m,
    /// The Modbus pollers: devices (state, last poll, latency, errors by kind) and counters.
    Modbus,
    /// The raw serial ports: state, frames and bytes each way, reopenings, and counters.
    Serial,
    /// Reload the password file, client-id allowlist and ACL (as SIGHUP).
    Reload,
    /// A config applied from the web UI: whether it waits for its confirm, or keep it.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Write every log line (debug included) of one client, topic or address to a file.
    Trace {
        #[command(subcommand)]
        action: TraceAction,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Whether an applied config runs on probation, and how long until it is rolled back.
    Status,
    /// Keep the applied config: ends its probation, it becomes the last known good one.
    Confirm,
}

#[derive(Debug, Subcommand)]
enum TraceAction {
    /// Start a trace: `trace start client dev-1 /tmp/dev-1.log`.
    Start {
        /// What to follow.
        kind: TraceKindArg,
        /// Client id, topic filter (`sensors/+/temp`), or address / CIDR network.
        value: String,
        /// File to write (created or truncated; relative to the current directory).
        file: PathBuf,
        /// Size limit of the file ("64MB" by default); further lines are counted, not written.
        #[arg(long)]
        max_size: Option<String>,
    },
    /// Stop every trace, or only the one of KIND VALUE.
    Stop {
        /// Only traces of this kind.
        kind: Option<TraceKindArg>,
        /// Only the trace of this value.
        value: Option<String>,
    },
    /// The running traces.
    List,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TraceKindArg {
    Client,
    Topic,
    Ip,
}

impl From<TraceKindArg> for holdfast::trace::TraceKind {
    fn from(k: TraceKindArg) -> Self {
        match k {
            TraceKindArg::Client => Self::Client,
            TraceKindArg::Topic => Self::Topic,
            TraceKindArg::Ip => Self::Ip,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ClientsAction {
    /// Every session.
    List,
    /// One session and its subscriptions.
    Show {
        /// Client id.
        client_id: String,
    },
    /// Close a client's connection (MQTT 5 clients get DISCONNECT 0x98).
    Kick {
        /// Client id.
        client_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PasswdAction {
    /// Add or update a user; the password is read from stdin when it is not a terminal.
    Add {
        /// User name.
        user: String,
        /// Password file.
        #[arg(long, short)]
        file: PathBuf,
    },
    /// Remove a user.
    Remove {
        /// User name.
        user: String,
        /// Password file.
        #[arg(long, short)]
        file: PathBuf,
    },
    /// List users.
    List {
        /// Password file.
        #[arg(long, short)]
        file: PathBuf,
    },
}

/// The musl builds (the aarch64 firmware) allocate with mimalloc: musl's own malloc takes one
/// global lock, which halves fan-out under the multi-threaded runtime (see Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any thread looks a name up: a static glibc build must not load the board's NSS
    // modules (holdfast_board::names).
    if let Err(e) = holdfast_board::names::pin_host_lookups() {
        eprintln!("warning: {e}");
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, data_dir } => run(config, data_dir),
        Command::Check { config } => check(config),
        Command::ExampleConfig => {
            print!("{}", config::example_toml());
            ExitCode::SUCCESS
        }
        Command::Resolve { host } => resolve(&host),
        Command::FactoryReset {
            config,
            data_dir,
            yes,
        } => factory_reset(config, data_dir, yes),
        Command::Ctl {
            socket,
            data_dir,
            config,
            json,
            command,
        } => ctl(socket, data_dir, config, json, command),
        Command::WebPasswd { config, data_dir } => web_passwd(config, data_dir),
        Command::Passwd { action } => {
            let cmd = match action {
                PasswdAction::Add { user, file } => PasswdCommand::Add { user, file },
                PasswdAction::Remove { user, file } => PasswdCommand::Remove { user, file },
                PasswdAction::List { file } => PasswdCommand::List { file },
            };
            match run_passwd(cmd) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn ctl(
    socket: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    config_path: Option<PathBuf>,
    json: bool,
    command: CtlCommand,
) -> ExitCode {
    use holdfast::ctl::{client, socket_path, Request};
    let path = match (socket, data_dir) {
        (Some(socket), _) => socket,
        (None, Some(dir)) => socket_path(&dir),
        (None, None) => match config::load(config_path.as_deref(), std::env::vars()) {
            Ok(cfg) => socket_path(&cfg.node.data_dir),
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let req = match command {
        CtlCommand::Listeners => Request::Listeners,
        CtlCommand::Clients { action } => match action {
            ClientsAction::List => Request::Clients,
            ClientsAction::Show { client_id } => Request::Client { client_id },
            ClientsAction::Kick { client_id } => Request::Kick { client_id },
        },
        CtlCommand::Subscriptions => Request::Subscriptions,
        CtlCommand::Retained => Request::Retained,
        CtlCommand::Stats => Request::Stats,
        CtlCommand::Bridges => Request::Bridges,
        CtlCommand::Coap => Request::Coap,
        CtlCommand::Lwm2m => Request::Lwm2m,
        CtlCommand::Modbus => Request::Modbus,
        CtlCommand::Serial => Request::Serial,
        CtlCommand::Reload => Request::Reload,
        CtlCommand::Config { action } => match action {
            ConfigAction::Status => Request::ConfigStatus,
            ConfigAction::Confirm => Request::ConfigConfirm,
        },
        CtlCommand::Trace { action } => match trace_request(action) {
            Ok(req) => req,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    match client::request(&path, &req) {
        Ok(answer) => {
            if json {
                println!("{answer}");
            } else {
                print!("{}", client::format(&req, &answer));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The control request of a `ctl trace` command. A bare file name goes as it is (the gateway
/// writes it under `{data_dir}/traces/`, the one place a hardened unit lets it write); a path
/// is made absolute here, since the gateway runs in another directory.
fn trace_request(action: TraceAction) -> Result<holdfast::ctl::Request, String> {
    use holdfast::ctl::Request;
    Ok(match action {
        TraceAction::Start {
            kind,
            value,
            file,
            max_size,
        } => Request::TraceStart {
            kind: kind.into(),
            value,
            file: if file.components().count() == 1 && file.is_relative() {
                file
            } else {
                std::path::absolute(&file).map_err(|e| format!("{}: {e}", file.display()))?
            },
            max_bytes: max_size
                .map(|s| config::parse_size(&s).map_err(|e| format!("--max-size: {e}")))
                .transpose()?,
        },
        TraceAction::Stop { kind, value } => Request::TraceStop {
            kind: kind.map(Into::into),
            value,
        },
        TraceAction::List => Request::TraceList,
    })
}

fn resolve(host: &str) -> ExitCode {
    use std::net::ToSocketAddrs;
    // A bare name gets a dummy port: the resolver wants HOST:PORT.
    let target = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:0")
    };
    match target.to_socket_addrs() {
        Ok(addrs) => {
            let mut any = false;
            for addr in addrs {
                println!("{}", addr.ip());
                any = true;
            }
            if any {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: {host}: no addresses");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: cannot resolve {host}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn web_passwd(config_path: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    let dir = match data_dir {
        Some(dir) => dir,
        None => match config::load(config_path.as_deref(), std::env::vars()) {
            Ok(cfg) => cfg.node.data_dir,
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let password = match holdfast::auth::read_password() {
        Ok(p) => String::from_utf8_lossy(&p).into_owned(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match holdfast::web::auth::reset_admin(&dir, &password) {
        Ok(()) => {
            println!(
                "set the web admin password in {}",
                dir.join("web/admin").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn factory_reset(config_path: Option<PathBuf>, data_dir: Option<PathBuf>, yes: bool) -> ExitCode {
    let dir = match data_dir {
        Some(dir) => dir,
        None => match config::load(config_path.as_deref(), std::env::vars()) {
            Ok(cfg) => cfg.node.data_dir,
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    if !yes {
        eprintln!(
            "this removes every session, queued and retained message and bridge queue in {}; run again with --yes",
            dir.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    match holdfast::ops::factory_reset(&dir) {
        Ok(done) => {
            println!(
                "factory reset of {}: removed {}",
                dir.display(),
                if done.removed.is_empty() {
                    "nothing".to_owned()
                } else {
                    done.removed.join(", ")
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: PathBuf) -> ExitCode {
    match config::load(Some(&path), std::env::vars()) {
        Ok(cfg) => {
            // The same security warnings `run` logs at start-up (nothing is bound here).
            for warning in holdfast::app::startup_warnings(&cfg) {
                eprintln!("warning: {warning}");
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let tls = holdfast::app::tls_files(&cfg, now);
            for warning in &tls.warnings {
                eprintln!("warning: {warning}");
            }
            if !tls.errors.is_empty() {
                for e in &tls.errors {
                    eprintln!("{}: {e}", path.display());
                }
                eprintln!("{} problem(s) found", tls.errors.len());
                return ExitCode::from(EXIT_CONFIG);
            }
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} problem(s) found", errors.problems.len());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Why the gateway runs on its last known good config instead of the one it was given.
struct Fallback {
    /// The config file that did not load or start.
    file: PathBuf,
    /// What went wrong with it.
    reason: String,
    /// The last known good copy it runs on.
    from: PathBuf,
}

/// The config to start with: the given one, or (when it does not load) the last known good
/// one kept in the data directory (see `holdfast::last_good`).
fn config_to_start(
    path: Option<&std::path::Path>,
    data_dir: Option<&std::path::Path>,
) -> Result<(Config, Option<Fallback>), ExitCode> {
    let mut loaded = match config::load(path, std::env::vars()) {
        Ok(cfg) => (cfg, None),
        Err(errors) => {
            eprintln!("{errors}");
            let Some(file) = path else {
                return Err(ExitCode::from(EXIT_CONFIG));
            };
            let dir = data_dir.map_or_else(|| last_good::data_dir_of(file), PathBuf::from);
            let Some((cfg, from)) = last_good::load(&dir) else {
                return Err(ExitCode::from(EXIT_CONFIG));
            };
            let reason = format!("it does not load ({} problem(s))", errors.problems.len());
            let fallback = Fallback {
                file: file.to_path_buf(),
                reason,
                from,
            };
            (cfg, Some(fallback))
        }
    };
    if let Some(dir) = data_dir {
        loaded.0.node.data_dir = dir.to_path_buf();
    }
    Ok(loaded)
}

fn run(path: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    // Before any thread starts: every thread inherits the block, so only the signal thread
    // takes the stop signals, from the moment their handlers exist (see `SignalThread`).
    let stop_signals_mask = StopSignals::block();
    // A config applied from the web UI is judged before it is loaded: a second start on it
    // without a confirm puts the previous file back first.
    let judged = match &path {
        Some(file) => {
            let dir = data_dir
                .clone()
                .unwrap_or_else(|| last_good::data_dir_of(file));
            probation::judge(file, &dir)
        }
        None => Judged::Nothing,
    };
    let (cfg, fallback) = match config_to_start(path.as_deref(), data_dir.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let data_dir_flag = data_dir;
    holdfast::logging::init(&cfg.log.level);
    holdfast_board::memory::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(holdfast_board::memory::worker_idle)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        // Installed before the listeners bind: a SIGHUP sent as soon as the port answers must
        // reload, not kill (the default action).
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        // SIGTERM and SIGINT too: one that arrives as soon as the port answers must stop the
        // gateway cleanly, not kill it.
        let stop_signals = (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        );
        // On the signal thread only; one that came while they were blocked (during a restart)
        // is delivered now, to the handlers.
        let signal_thread = SignalThread::start(stop_signals_mask);
        let data_dir = cfg.node.data_dir.clone();
        let (mut gateway, fallback) = match Gateway::bind(cfg, shutdown.clone()).await {
            Ok(g) => (g, fallback),
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("error: {e}");
                // A config that loads but does not start (a port taken, a certificate missing)
                // falls back too, unless it is the last known good one already.
                let retry = match (&path, &fallback) {
                    (Some(file), None) if !last_good::is_same(&data_dir, file) => {
                        last_good::load(&data_dir).map(|(cfg, from)| {
                            let reason = format!("it does not start ({e})");
                            (cfg, Fallback { file: file.clone(), reason, from })
                        })
                    }
                    _ => None,
                };
                let Some((mut cfg, fb)) = retry else {
                    return (ExitCode::FAILURE, None, signal_thread);
                };
                if let Some(dir) = &data_dir_flag {
                    cfg.node.data_dir = dir.clone();
                }
                match Gateway::bind(cfg, shutdown.clone()).await {
                    Ok(g) => (g, Some(fb)),
                    Err(e) => {
                        tracing::error!("the last known good config does not start either: {e}");
                        eprintln!("error: the last known good config does not start either: {e}");
                        return (ExitCode::FAILURE, None, signal_thread);
                    }
                }
            }
        };
        let config_file = ConfigFile::new(path.clone(), data_dir.clone(), data_dir_flag.is_some());
        let restart = config_file.restart_state();
        gateway.set_config_file(config_file);
        if let Judged::RolledBack(why) = &judged {
            tracing::error!("{why}");
            gateway.raise_standing_alarm(why.clone());
        }
        // An applied config on probation that does not come up goes back at once.
        let rolled_back = match (&fallback, &judged) {
            (Some(fb), Judged::Probation { .. }) => {
                probation::roll_back(&fb.file, &data_dir, &fb.reason, false)
                    .map(|alarm| format!("; {alarm}"))
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        match (&fallback, &path) {
            (Some(fb), _) => {
                let alarm = format!(
                    "running the last known good config {}: {} {}{rolled_back}",
                    fb.from.display(),
                    fb.file.display(),
                    fb.reason
                );
                tracing::error!("{alarm}; fix it (`holdfast check --config {}`) and restart", fb.file.display());
                gateway.raise_standing_alarm(alarm);
            }
            (None, Some(file)) => match &judged {
                // Kept as the last known good config only once confirmed.
                Judged::Probation { confirm_by, window, .. } => {
                    tracing::warn!(confirm_by, "this config was applied from the web UI and runs on probation: confirm it within {}s (POST /api/v1/config/confirm) or it is rolled back", window.as_secs());
                    tokio::spawn(probation_deadline(
                        file.clone(),
                        data_dir.clone(),
                        *window,
                        restart.clone(),
                        shutdown.clone(),
                    ));
                }
                _ => {
                    if let Err(e) = last_good::save(&data_dir, file) {
                        tracing::warn!(path = %last_good::path(&data_dir).display(), error = %e, "cannot keep this config as the last known good one");
                    }
                }
            },
            (None, None) => {}
        }
        tokio::spawn(wait_for_signal(stop_signals, shutdown, restart.clone()));
        match hup {
            Ok(hup) => {
                tokio::spawn(reload_on_sighup(hup, gateway.broker()));
            }
            Err(e) => tracing::error!(
                "cannot install the SIGHUP handler ({e}); auth files will not be reloaded"
            ),
        }
        gateway.serve().await;
        (ExitCode::SUCCESS, Some(restart), signal_thread)
    });
    match outcome {
        (_, Some(state), signal_thread) if state.restarting() => {
            // From here a stop signal stays pending instead of meeting a handler whose runtime
            // is gone: no thread takes it any more; the exec keeps it pending and blocked, and
            // the new program takes it as soon as its handlers exist.
            signal_thread.stop();
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            // A SIGTERM during the runtime's shutdown still wins.
            if state.restarting() {
                restart()
            } else {
                ExitCode::SUCCESS
            }
        }
        (code, _, _) => code,
    }
}

/// SIGTERM, SIGINT and SIGHUP, blocked in every thread but the [`SignalThread`] while the
/// gateway runs, and in all of them across a restart: none of them is ever swallowed by a
/// handler that nobody reads any more.
#[derive(Clone, Copy)]
struct StopSignals(nix::sys::signal::SigSet);

impl StopSignals {
    fn block() -> StopSignals {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            set.add(s);
        }
        let signals = StopSignals(set);
        signals.block_again();
        signals
    }

    fn block_again(&self) {
        if let Err(e) = self.0.thread_block() {
            eprintln!("warning: cannot block the stop signals: {e}");
        }
    }

    fn unblock(&self) {
        if let Err(e) = self.0.thread_unblock() {
            eprintln!("warning: cannot unblock the stop signals: {e}");
        }
    }
}

/// The one thread with the stop signals unblocked: the kernel delivers them there, to the
/// runtime's handlers. Every other thread keeps them blocked, including the ones that
/// libraries start later from any thread (a thread inherits its creator's mask): with the
/// main thread taking them instead, a thread it started (a blocking-pool or storage thread)
/// could take a SIGTERM in the instant of a restart and run a handler nobody reads any more.
struct SignalThread {
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SignalThread {
    /// Unblocks the signals on a new thread, which waits until [`SignalThread::stop`].
    fn start(mask: StopSignals) -> SignalThread {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("holdfast-signals".into())
            .spawn(move || {
                mask.unblock();
                // A signal interrupts the wait only to run its handler here.
                let _ = stopped.recv();
                mask.block_again();
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                // Without it the signals stay blocked: SIGKILL still stops the gateway.
                eprintln!("warning: cannot start the signal thread ({e}); stop with SIGKILL");
                None
            }
        };
        SignalThread { stop, thread }
    }

    /// Blocks the signals on that thread too and waits for it to end: from then a stop signal
    /// stays pending.
    fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Rolls an applied config back and restarts the gateway when it is not confirmed within
/// `window` (on the monotonic clock); ends when it is confirmed or the gateway stops.
async fn probation_deadline(
    file: PathBuf,
    data_dir: PathBuf,
    window: std::time::Duration,
    restart: RestartState,
    shutdown: CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let dir = data_dir.clone();
        let pending = tokio::task::spawn_blocking(move || probation::pending(&dir))
            .await
            .unwrap_or(false);
        if !pending {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            if restart.request_restart() {
                let why = format!("was not confirmed within {}s", window.as_secs());
                let _ = tokio::task::spawn_blocking(move || {
                    probation::roll_back(&file, &data_dir, &why, true)
                })
                .await;
                shutdown.cancel();
            }
            return;
        }
        let step = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(std::time::Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Starts this program again in this process (same pid for systemd, same arguments, same
/// environment), after a config was applied from the web UI; only returns when that fails.
///
/// `execv` itself, not std's `Command::exec`: that one empties the signal mask first, which
/// would hand a pending SIGTERM to this program's handler in its last instant, and lose it.
fn restart() -> ExitCode {
    use std::os::unix::ffi::OsStringExt as _;
    let mut args: Vec<std::ffi::CString> = Vec::new();
    for arg in std::env::args_os() {
        // The kernel gave us these as C strings: no NUL inside.
        match std::ffi::CString::new(arg.into_vec()) {
            Ok(arg) => args.push(arg),
            Err(e) => {
                eprintln!("error: cannot restart the gateway: an argument holds a NUL ({e})");
                return ExitCode::FAILURE;
            }
        }
    }
    tracing::info!("restarting on the applied config");
    let Err(error) = nix::unistd::execv(c"/proc/self/exe", &args);
    eprintln!("error: cannot restart the gateway: {error}");
    ExitCode::FAILURE
}

/// SIGTERM or SIGINT stops the gateway, also when a config apply had asked for a restart.
async fn wait_for_signal(
    signals: (
        std::io::Result<tokio::signal::unix::Signal>,
        std::io::Result<tokio::signal::unix::Signal>,
    ),
    shutdown: CancellationToken,
    restart: RestartState,
) {
    let (Ok(mut term), Ok(mut int)) = signals else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    restart.stop();
    shutdown.cancel();
}

/// SIGHUP reloads the auth files (password file, client-id allowlist, ACL) without dropping
/// clients; a broken file keeps the previous one (see `holdfast::ops::reload`).
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    broker: std::sync::Arc<holdfast::broker::Broker>,
) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received");
        let broker = broker.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || holdfast::ops::reload(&broker)).await {
            tracing::error!("reload failed: {e}");
        }
    }
}
