//! A connection's queue of frames, from the node to the host's writer.
//!
//! A bounded single-producer, single-consumer queue that holds nothing
//! while it is empty: a class keeps tens of thousands of them, nearly all
//! empty between two messages, and a general channel allocates its first
//! block of slots up front (tokio's mpsc: 32 slots, over 2 KiB a
//! connection). The node pushes under its lock; the writer pops, and is
//! woken only when it waits on an empty queue.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use room_service::Outbound;

/// A queue that drained after holding more than this many frames gives
/// its memory back.
const KEEP: usize = 8;

struct State {
    frames: VecDeque<Outbound>,
    /// The writer waiting for a frame, if it is waiting.
    waiting: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
}

/// A new queue that holds at most `capacity` frames (at least 1).
pub(crate) fn outbox(capacity: usize) -> (OutboxSender, OutboundFrames) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { frames: VecDeque::new(), waiting: None, sender_gone: false, receiver_gone: false }),
        capacity: capacity.max(1),
    });
    (OutboxSender { shared: shared.clone() }, OutboundFrames { shared })
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds `capacity` frames.
    Full,
    /// The writer is gone.
    Closed,
}

/// The node's end.
pub(crate) struct OutboxSender {
    shared: Arc<Shared>,
}

impl OutboxSender {
    /// Queues `frame` if there is room and the writer is still there.
    pub(crate) fn try_send(&self, frame: Outbound) -> Result<(), Refused> {
        let waker = {
            let mut state = self.shared.state.lock();
            if state.receiver_gone {
                return Err(Refused::Closed);
            }
            if state.frames.len() >= self.shared.capacity {
                return Err(Refused::Full);
            }
            state.frames.push_back(frame);
            state.waiting.take()
        };
        // Woken outside the lock: the writer takes it at once.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Whether a frame would fit now.
    pub(crate) fn has_room(&self) -> bool {
        self.shared.state.lock().frames.len() < self.shared.capacity
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.state.lock();
            state.sender_gone = true;
            state.waiting.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Why [`OutboundFrames::try_recv`] returned nothing (complete: a queue
/// is either empty for now or over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is queued now.
    #[error("no frame is waiting")]
    Empty,
    /// The service let the connection go and every frame was taken.
    #[error("the connection is over")]
    Disconnected,
}

/// The frames for one client, in order ([`Connection::outbound`](super::Connection::outbound)):
/// the stream ends once the service has let the connection go and every
/// frame was taken. At most [`ServiceConfig::outbound`](super::ServiceConfig::outbound)
/// frames wait here; the rest wait in the node, which sheds chat first.
pub struct OutboundFrames {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for OutboundFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundFrames").field("queued", &self.len()).finish_non_exhaustive()
    }
}

impl OutboundFrames {
    /// The next frame; `None` once the connection is over.
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next frame if one is queued, [`Poll::Pending`] (and a wake-up
    /// when one comes) if not; `Ready(None)` once the connection is over.
    #[must_use = "a frame taken here is gone from the queue"]
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        let mut state = self.shared.state.lock();
        if let Some(frame) = Self::pop(&mut state) {
            return Poll::Ready(Some(frame));
        }
        if state.sender_gone {
            return Poll::Ready(None);
        }
        // Registered under the lock the sender pushes under: no frame can
        // come between the look and the registration unseen.
        match &mut state.waiting {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Ready once the service has let the connection go (frames may still
    /// be queued); a wake-up registered otherwise. For a writer that stops
    /// taking frames while its socket is full and must still learn that
    /// the connection is over.
    #[must_use = "a pending poll registers a wake-up only"]
    pub fn poll_released(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.state.lock();
        if state.sender_gone {
            return Poll::Ready(());
        }
        match &mut state.waiting {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next frame if one is queued now.
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        let mut state = self.shared.state.lock();
        match Self::pop(&mut state) {
            Some(frame) => Ok(frame),
            None if state.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.shared.state.lock().frames.len()
    }

    /// Whether no frame is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(state: &mut State) -> Option<Outbound> {
        let frame = state.frames.pop_front();
        if state.frames.is_empty() && state.frames.capacity() > KEEP {
            // A burst is over: the next one allocates again.
            state.frames = VecDeque::new();
        }
        frame
    }
}

impl Drop for OutboundFrames {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.receiver_gone = true;
        state.frames = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn frame(n: u32) -> Outbound {
        Outbound::Text(Bytes::from(n.to_string()))
    }

    fn number(f: Outbound) -> u32 {
        match f {
            Outbound::Text(b) => std::str::from_utf8(&b).expect("utf-8").parse().expect("a number"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send,
        Recv,
        DropSender,
    }

    proptest! {
        /// Against a bounded VecDeque: the same frames in the same order,
        /// refused when full, and the end once the sender is gone and the
        /// queue drained.
        #[test]
        fn it_behaves_as_a_bounded_fifo(
            capacity in 1usize..20,
            ops in prop::collection::vec(prop_oneof![4 => Just(Op::Send), 4 => Just(Op::Recv), 1 => Just(Op::DropSender)], 0..200),
        ) {
            let (tx, mut rx) = outbox(capacity);
            let mut tx = Some(tx);
            let mut model: VecDeque<u32> = VecDeque::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Send => {
                        let Some(sender) = &tx else { continue };
                        let got = sender.try_send(frame(next));
                        if model.len() < capacity {
                            prop_assert_eq!(got, Ok(()));
                            model.push_back(next);
                        } else {
                            prop_assert_eq!(got, Err(Refused::Full));
                        }
                        prop_assert_eq!(sender.has_room(), model.len() < capacity);
                        next += 1;
                    }
                    Op::Recv => {
                        let got = rx.try_recv().map(number);
                        match model.pop_front() {
                            Some(n) => prop_assert_eq!(got, Ok(n)),
                            None if tx.is_none() => prop_assert_eq!(got, Err(TryRecvError::Disconnected)),
                            None => prop_assert_eq!(got, Err(TryRecvError::Empty)),
                        }
                    }
                    Op::DropSender => tx = None,
                }
                prop_assert_eq!(rx.len(), model.len());
            }
        }
    }

    #[test]
    fn a_sender_finds_the_writer_gone() {
        let (tx, rx) = outbox(4);
        tx.try_send(frame(1)).expect("queued");
        drop(rx);
        assert_eq!(tx.try_send(frame(2)), Err(Refused::Closed));
    }

    #[test]
    fn a_burst_gives_its_memory_back_once_drained() {
        let (tx, mut rx) = outbox(512);
        for n in 0..100 {
            tx.try_send(frame(n)).expect("queued");
        }
        for n in 0..100 {
            assert_eq!(rx.try_recv().map(number), Ok(n));
        }
        assert_eq!(rx.shared.state.lock().frames.capacity(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_writer_gets_every_frame_from_another_thread_in_order() {
        let (tx, mut rx) = outbox(8);
        let sender = std::thread::spawn(move || {
            let mut n = 0;
            while n < 20_000 {
                match tx.try_send(frame(n)) {
                    Ok(()) => n += 1,
                    Err(Refused::Full) => std::thread::yield_now(),
                    Err(Refused::Closed) => panic!("the writer is there"),
                }
            }
        });
        let mut expected = 0;
        while let Some(f) = rx.recv().await {
            assert_eq!(number(f), expected);
            expected += 1;
        }
        sender.join().expect("sender");
        assert_eq!(expected, 20_000);
    }
}
