//! The host's side of delivery: connectors that write frames to clients.

use bytes::Bytes;
use room_core::{Terminal, Uin};

use crate::codec::FrameHeader;
use crate::node::ConnId;

/// One frame for one connection: a per-recipient header and a body shared
/// (the same [`Bytes`]) by every recipient of the message.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The connection.
    pub conn: ConnId,
    /// Its user.
    pub uin: Uin,
    /// Its terminal, for hosts that route by terminal.
    pub terminal: Terminal,
    /// The header.
    pub header: FrameHeader,
    /// The body, encoded once in the connection's wire format (empty for a
    /// resync marker).
    pub body: &'a Bytes,
}

/// Why a connector did not take a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection cannot take more now. The frame stays queued and the
    /// connection is parked until the host calls
    /// [`PushNode::set_writable`](crate::PushNode::set_writable).
    #[error("the connection is not writable now")]
    WouldBlock,
    /// The connection is gone; the node drops it.
    #[error("the connection is closed")]
    Closed,
    /// Writing failed; the node drops the connection with this reason.
    #[error("the connector failed: {0}")]
    Failed(String),
}

/// Writes frames to clients: a websocket server, an app push service, a PC
/// long connection. Implemented by the host. `send` must not block: a
/// connection that cannot take a frame now answers [`SendError::WouldBlock`].
///
/// ```
/// use std::collections::HashMap;
/// use room_push::{ConnId, Connector, Frame, SendError};
///
/// /// Bounded per-connection queues that a socket task drains.
/// struct Queues(HashMap<ConnId, Vec<bytes::Bytes>>);
///
/// impl Connector for Queues {
///     fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
///         let queue = self.0.get_mut(&frame.conn).ok_or(SendError::Closed)?;
///         if queue.len() >= 256 {
///             return Err(SendError::WouldBlock); // the node keeps it in the lane
///         }
///         // The body is shared by every recipient; the header is this
///         // connection's (sequence number, previous number).
///         queue.push(frame.body.clone());
///         Ok(())
///     }
/// }
/// ```
pub trait Connector {
    /// Writes (or buffers) one frame.
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError>;
}

impl<C: Connector + ?Sized> Connector for &mut C {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        (**self).send(frame)
    }
}

impl<C: Connector + ?Sized> Connector for Box<C> {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        (**self).send(frame)
    }
}

/// One connector per terminal: web and H5 over websockets, the apps over
/// their push channel, the PC and Mac clients over their long connection.
///
/// ```
/// use room_core::Terminal;
/// use room_push::{ByTerminal, Connector, Frame, SendError};
///
/// #[derive(Default)]
/// struct Count(u64);
/// impl Connector for Count {
///     fn send(&mut self, _frame: &Frame<'_>) -> Result<(), SendError> {
///         self.0 += 1;
///         Ok(())
///     }
/// }
///
/// let mut connectors = ByTerminal::new(Box::new(Count::default()) as Box<dyn Connector>);
/// connectors.set(Terminal::Ios, Box::new(Count::default()));
/// ```
pub struct ByTerminal<C> {
    fallback: C,
    by_terminal: [Option<C>; 7],
}

impl<C> std::fmt::Debug for ByTerminal<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: Vec<Terminal> =
            Terminal::ALL.iter().zip(&self.by_terminal).filter(|(_, c)| c.is_some()).map(|(t, _)| *t).collect();
        f.debug_struct("ByTerminal").field("dedicated", &set).finish_non_exhaustive()
    }
}

fn terminal_index(terminal: Terminal) -> usize {
    Terminal::ALL.iter().position(|t| *t == terminal).unwrap_or(0)
}

impl<C> ByTerminal<C> {
    /// Every terminal through `fallback` until [`ByTerminal::set`] gives it its own.
    pub fn new(fallback: C) -> Self {
        ByTerminal { fallback, by_terminal: Default::default() }
    }

    /// `terminal` through `connector`.
    pub fn set(&mut self, terminal: Terminal, connector: C) {
        self.by_terminal[terminal_index(terminal)] = Some(connector);
    }

    /// The connector dedicated to `terminal`, if one was set.
    pub fn get(&self, terminal: Terminal) -> Option<&C> {
        self.by_terminal[terminal_index(terminal)].as_ref()
    }

    /// The connector for terminals without their own.
    pub fn fallback(&self) -> &C {
        &self.fallback
    }
}

impl<C: Connector> Connector for ByTerminal<C> {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        match &mut self.by_terminal[terminal_index(frame.terminal)] {
            Some(c) => c.send(frame),
            None => self.fallback.send(frame),
        }
    }
}
