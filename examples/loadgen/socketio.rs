//! The websocket mode's clients speaking Socket.IO (protocol 5, over
//! Engine.IO v4 on a websocket, no polling), for the peers of issue 17
//! (`peers/`): the same workload in that server's idiom.
//!
//! A client opens `ws://HOST/socket.io/?EIO=4&transport=websocket`, reads
//! Engine.IO's open packet (`0{"sid",...,"pingInterval"}`), connects the
//! default namespace with its auth (`40{"uin","role","subclass"}`) and
//! waits for the server's `40{"sid"}`. Events are `42["name",data]`: the
//! teacher sends `say` `{"text"}`, students `chat` `{"text"}`; the server
//! sends `say` to everyone and `chat` batches to a sub-class and the staff.
//! The server pings with `2`; the client answers `3` (Socket.IO's
//! heartbeat: there is no other).

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{Dialect, Frame, Ws, dial};

/// Students per sub-class: student `i` (client `i + 1`) is in sub-class
/// `i / 500`.
pub(crate) const SUBCLASS: u64 = 500;

/// How long a client waits for each step of entering.
const ENTRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Socket.IO servers at `bases` (client `n` goes to `bases[n % len]`).
pub(crate) struct SocketIo {
    pub(crate) bases: Vec<String>,
}

/// The next text frame, answering pings meanwhile.
async fn next_text(ws: &mut Ws) -> Result<String, Box<dyn std::error::Error>> {
    loop {
        let msg = tokio::time::timeout(ENTRY_TIMEOUT, ws.next()).await.map_err(|_| "no answer from the server")?;
        match msg {
            Some(Ok(WsMessage::Text(t))) if t.as_str() == "2" => ws.send(WsMessage::Text("3".into())).await?,
            Some(Ok(WsMessage::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(WsMessage::Close(why))) => return Err(format!("closed while entering: {why:?}").into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("closed while entering".into()),
        }
    }
}

impl Dialect for SocketIo {
    const BEAT: Option<&'static str> = None;

    async fn enter(&self, n: u64, _sender: bool) -> Result<Ws, Box<dyn std::error::Error>> {
        let base = &self.bases[n as usize % self.bases.len()];
        let mut ws = dial(base, "/socket.io/?EIO=4&transport=websocket", n).await?;
        let open = next_text(&mut ws).await?;
        if !open.starts_with("0{") {
            return Err(format!("expected Engine.IO's open packet, got {open:?}").into());
        }
        let auth = if n == 0 {
            r#"{"uin":1,"role":"teacher"}"#.to_owned()
        } else {
            format!(r#"{{"uin":{},"role":"student","subclass":{}}}"#, n + 1, (n - 1) / SUBCLASS)
        };
        ws.send(WsMessage::Text(format!("40{auth}").into())).await?;
        loop {
            let t = next_text(&mut ws).await?;
            if t.starts_with("40") {
                return Ok(ws);
            }
            if t.starts_with("44") {
                return Err(format!("the server refused client {n}: {t}").into());
            }
        }
    }

    fn chat(micros: u64) -> String {
        format!(r#"42["chat",{{"text":"t={micros}"}}]"#)
    }

    fn say(micros: u64) -> String {
        format!(r#"42["say",{{"text":"t={micros}"}}]"#)
    }

    fn read(frame: &str) -> Frame {
        if frame == "2" {
            Frame::Reply("3")
        } else if frame.starts_with(r#"42["say","#) {
            Frame::Class("teacher")
        } else if frame.starts_with(r#"42["chat","#) {
            Frame::Class("chat")
        } else {
            Frame::Other
        }
    }
}
