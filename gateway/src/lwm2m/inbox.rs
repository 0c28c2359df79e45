//! One endpoint task's inbox: the server task puts the device's events in, the endpoint task
//! takes them out, in order.
//!
//! Why not a tokio mpsc channel: one costs about 1 KB per endpoint before it carries anything
//! (a block of 32 slots and cache-padded counters), and a server holds thousands of idle
//! endpoints. This one is a small shared queue (about 100 bytes idle, allocating only while
//! events wait) with a waker, polled by the task's own wait (no future of its own). Bounded by
//! `capacity`; the sender never waits (a full inbox is the caller's to count). Single
//! consumer. It also carries the one thing the task tells the server back: when the device
//! was last heard from (shown by `holdfast ctl lwm2m`), in the same allocation.

use super::Inbound;
use atomic_waker::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

struct Shared {
    queue: Mutex<VecDeque<Inbound>>,
    ready: AtomicWaker,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
    capacity: usize,
    last_seen: Mutex<Instant>,
}

/// Puts events in; cloned for each lookup of the endpoint.
pub(super) struct Sender(Arc<Shared>);

/// Takes events out; held by the endpoint task.
pub(super) struct Receiver(Arc<Shared>);

/// Why an event was not put in (it is handed back).
#[derive(Debug)]
pub(super) enum TrySendError {
    /// `capacity` events wait already (the event is dropped).
    Full,
    /// The endpoint task has ended.
    Closed(Inbound),
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("inbox::Sender").finish_non_exhaustive()
    }
}

/// An inbox holding at most `capacity` waiting events.
pub(super) fn inbox(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        ready: AtomicWaker::new(),
        senders: AtomicUsize::new(1),
        receiver_alive: AtomicBool::new(true),
        capacity: capacity.max(1),
        last_seen: Mutex::new(Instant::now()),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    /// Puts `event` in unless the inbox is full or its task has ended.
    pub(super) fn try_send(&self, event: Inbound) -> Result<(), TrySendError> {
        if !self.0.receiver_alive.load(Ordering::Acquire) {
            return Err(TrySendError::Closed(event));
        }
        {
            let mut queue = crate::udp::lock(&self.0.queue);
            if queue.len() >= self.0.capacity {
                return Err(TrySendError::Full);
            }
            queue.push_back(event);
        }
        self.0.ready.wake();
        Ok(())
    }
}

impl Sender {
    /// When the receiving task last heard from its device.
    pub(super) fn last_seen(&self) -> Instant {
        *crate::udp::lock(&self.0.last_seen)
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: the receiver learns there is nothing more to wait for.
            self.0.ready.wake();
        }
    }
}

impl Receiver {
    /// The next event; `None` once every sender is gone and the inbox is empty. Cancel-safe:
    /// an event is only taken when it is returned.
    #[cfg(test)]
    pub(super) async fn recv(&mut self) -> Option<Inbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one waits (`Ready(None)` once every sender is gone and the inbox is
    /// empty); otherwise `cx` is woken when one is put in.
    pub(super) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        if let Some(event) = self.take() {
            return Poll::Ready(Some(event));
        }
        self.0.ready.register(cx.waker());
        // Registered first, then checked again: an event put in meanwhile is not missed.
        if let Some(event) = self.take() {
            return Poll::Ready(Some(event));
        }
        if self.0.senders.load(Ordering::Acquire) == 0 {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// The device was heard from at `at`.
    pub(super) fn heard(&self, at: Instant) {
        *crate::udp::lock(&self.0.last_seen) = at;
    }

    fn take(&mut self) -> Option<Inbound> {
        let mut queue = crate::udp::lock(&self.0.queue);
        let event = queue.pop_front()?;
        if queue.is_empty() {
            // A burst is over: an idle endpoint keeps no buffer.
            *queue = VecDeque::new();
        }
        Some(event)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.0.receiver_alive.store(false, Ordering::Release);
        crate::udp::lock(&self.0.queue).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn events_arrive_in_order_and_a_full_inbox_refuses() {
        let (tx, mut rx) = inbox(2);
        tx.try_send(Inbound::Expired).unwrap();
        tx.clone().try_send(Inbound::Expired).unwrap();
        assert!(matches!(
            tx.try_send(Inbound::Expired),
            Err(TrySendError::Full)
        ));
        assert!(matches!(rx.recv().await, Some(Inbound::Expired)));
        assert!(matches!(rx.recv().await, Some(Inbound::Expired)));
        tx.try_send(Inbound::Expired).unwrap();
        assert!(rx.recv().await.is_some());
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_an_event_and_ends_with_the_last_sender() {
        let (tx, mut rx) = inbox(4);
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await.is_some();
            let end = rx.recv().await.is_none();
            (first, end)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let other = tx.clone();
        tx.try_send(Inbound::Expired).unwrap();
        drop(tx);
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(other);
        let (first, end) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(first && end);
    }

    #[tokio::test]
    async fn a_receiver_cancelled_while_waiting_loses_nothing() {
        let (tx, mut rx) = inbox(4);
        // A wait dropped by a select! that took another branch.
        assert!(tokio::time::timeout(Duration::from_millis(10), rx.recv())
            .await
            .is_err());
        tx.try_send(Inbound::Expired).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(got, Ok(Some(Inbound::Expired))));
    }

    #[test]
    fn the_sender_sees_when_the_task_last_heard_from_its_device() {
        let (tx, rx) = inbox(1);
        let later = tx.last_seen() + Duration::from_secs(5);
        rx.heard(later);
        assert_eq!(tx.clone().last_seen(), later);
    }

    #[test]
    fn a_sender_learns_that_the_task_ended() {
        let (tx, rx) = inbox(4);
        drop(rx);
        assert!(matches!(
            tx.try_send(Inbound::Expired),
            Err(TrySendError::Closed(_))
        ));
    }
}
