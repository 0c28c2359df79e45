//! The operations service layer: actions an operator takes on a running gateway.
//!
//! Owns the entry points that SIGHUP, `holdfast ctl` and the web UI share, so each action has
//! one implementation and one log format whoever asks for it. Each function is synchronous and
//! may block briefly on file I/O: async callers run it in `spawn_blocking`. It never exits the
//! process and never drops clients.

use crate::auth::ReloadReport;
use crate::broker::Broker;

/// Reloads the password file, the client-id allowlist and the ACL file (`holdfast ctl
/// reload`, SIGHUP). A broken file keeps its previous version in force and is reported (and
/// logged as `file:line: reason`); connected clients stay connected and get the new ACL at
/// their next publish or subscribe.
pub fn reload(broker: &Broker) -> ReloadReport {
    tracing::info!("reloading the auth files");
    broker.auth.reload()
}
