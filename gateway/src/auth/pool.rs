//! The password-check workers: a fixed number of threads that run the connect-time
//! authentication chain ([`Authenticator::check`]), fed through a bounded queue.
//!
//! Owns the threads, the queue and the argon2 working memory: each worker verifies with one
//! buffer it keeps for its whole life ([`with_argon2_memory`]), so a flood of logins costs
//! `workers x 19 MiB` once, not 19 MiB per attempt on whichever blocking thread ran it (glibc
//! kept those arenas: 650 MB after 50 failed logins). It never blocks the async runtime (a
//! full queue is an immediate `Busy`), and never runs a check for a client that stopped
//! waiting (its reply channel is closed).

use super::{AuthDecision, Authenticator};
use std::cell::RefCell;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// One login to check.
struct Job {
    client_id: String,
    username: Option<String>,
    password: Option<Vec<u8>>,
    reply: tokio::sync::oneshot::Sender<AuthDecision>,
}

/// Why a check was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Every worker is busy and the queue is full.
    QueueFull,
    /// The workers are gone (shutting down).
    Stopped,
}

/// The workers and their queue.
#[derive(Debug)]
pub struct CheckPool {
    tx: SyncSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl CheckPool {
    /// Starts `workers` threads over `auth`, with room for `queue` waiting checks.
    /// A thread that cannot be started is logged; with none at all, every login is refused
    /// as [`Busy::Stopped`].
    pub fn start(auth: Arc<Authenticator>, workers: usize, queue: usize) -> Arc<CheckPool> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let pool = Arc::new(CheckPool { tx });
        for i in 0..workers.max(1) {
            let rx = Arc::clone(&rx);
            let auth = Arc::clone(&auth);
            if let Err(e) = std::thread::Builder::new()
                .name(format!("auth-{i}"))
                .spawn(move || worker(&rx, &auth))
            {
                tracing::error!(error = %e, "cannot start a password-check thread");
            }
        }
        pool
    }

    /// Queues a check; the decision comes on the returned channel. `Err` at once when the
    /// queue is full: the caller refuses the client as busy instead of piling it up.
    pub fn submit(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<tokio::sync::oneshot::Receiver<AuthDecision>, Busy> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            client_id: client_id.to_owned(),
            username: username.map(str::to_owned),
            password: password.map(<[u8]>::to_vec),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(Busy::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(Busy::Stopped),
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, auth: &Authenticator) {
    loop {
        let job = {
            let Ok(rx) = rx.lock() else {
                return;
            };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if job.reply.is_closed() {
            // The client hung up or gave up waiting: no argon2 for nobody.
            continue;
        }
        let decision = auth.check(
            &job.client_id,
            job.username.as_deref(),
            job.password.as_deref(),
        );
        let _ = job.reply.send(decision);
    }
}

thread_local! {
    /// The argon2 working memory of this thread, kept between verifications.
    static ARGON2_MEMORY: RefCell<Vec<argon2::Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's argon2 memory, grown to `blocks` (never shrunk: a worker's
/// footprint is that of the largest hash it verified).
pub(super) fn with_argon2_memory<R>(blocks: usize, f: impl FnOnce(&mut [argon2::Block]) -> R) -> R {
    ARGON2_MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < blocks {
            m.resize(blocks, argon2::Block::default());
        }
        f(&mut m[..blocks])
    })
}
