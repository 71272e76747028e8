//! The smallest ZeroMQ client the live mixer needs: ZMTP 3.0 over TCP,
//! NULL security, as a DEALER talking to ffmpeg's `zmq` filter (a REP
//! socket). A DEALER may send several requests before reading the replies,
//! so a layout switch's commands all reach ffmpeg before its next frame and
//! take effect together. Written here rather than linking libzmq: a few
//! frames over one local TCP connection, nothing else of ZeroMQ is used.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Frames of a reply larger than this are refused (ffmpeg's replies are a
/// status code and a short message).
const MAX_FRAME: u64 = 64 * 1024;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// A connection to a REP socket.
#[derive(Debug)]
pub(crate) struct Dealer {
    stream: TcpStream,
}

impl Dealer {
    /// Connects and completes the ZMTP 3.0 handshake.
    pub(crate) fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Dealer> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut dealer = Dealer { stream };
        dealer.stream.write_all(&greeting())?;
        let mut theirs = [0u8; 64];
        dealer.stream.read_exact(&mut theirs)?;
        if theirs[0] != 0xFF || theirs[9] != 0x7F || theirs[10] < 3 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a ZMTP 3 peer"));
        }
        if &theirs[12..16] != b"NULL" {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the peer wants a security mechanism"));
        }
        dealer.write_frame(FLAG_COMMAND, &ready("DEALER"))?;
        // Their READY (or an ERROR) comes first.
        let (flags, body) = dealer.read_frame()?;
        if flags & FLAG_COMMAND == 0 || body.get(1..6).is_none_or(|name| name != b"READY") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the peer did not send READY"));
        }
        Ok(dealer)
    }

    /// Sends every request, then reads a reply for each, in order.
    pub(crate) fn requests(&mut self, requests: &[String]) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for request in requests {
            // A REP socket expects the envelope's empty delimiter first.
            frame_into(&mut out, FLAG_MORE, &[]);
            frame_into(&mut out, 0, request.as_bytes());
        }
        self.stream.write_all(&out)?;
        let mut replies = Vec::with_capacity(requests.len());
        while replies.len() < requests.len() {
            let (flags, body) = self.read_frame()?;
            if flags & FLAG_COMMAND != 0 || (flags & FLAG_MORE != 0 && body.is_empty()) {
                continue; // a command (a ping) or the delimiter
            }
            replies.push(String::from_utf8_lossy(&body).into_owned());
        }
        Ok(replies)
    }

    fn write_frame(&mut self, flags: u8, body: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(body.len() + 9);
        frame_into(&mut out, flags, body);
        self.stream.write_all(&out)
    }

    fn read_frame(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut flags = [0u8; 1];
        self.stream.read_exact(&mut flags)?;
        let len = if flags[0] & FLAG_LONG != 0 {
            let mut len = [0u8; 8];
            self.stream.read_exact(&mut len)?;
            u64::from_be_bytes(len)
        } else {
            let mut len = [0u8; 1];
            self.stream.read_exact(&mut len)?;
            u64::from(len[0])
        };
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
        }
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body)?;
        Ok((flags[0], body))
    }
}

/// Our greeting: signature, version 3.0, NULL, not a server.
fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// The READY command naming our socket type.
fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    let name = b"Socket-Type";
    body.push(name.len() as u8);
    body.extend_from_slice(name);
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    body
}

fn frame_into(out: &mut Vec<u8>, flags: u8, body: &[u8]) {
    if body.len() > 255 {
        out.push(flags | FLAG_LONG);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_short_up_to_255_bytes_then_long() {
        let mut out = Vec::new();
        frame_into(&mut out, FLAG_MORE, &[]);
        assert_eq!(out, [FLAG_MORE, 0]);
        let mut out = Vec::new();
        frame_into(&mut out, 0, &[7; 255]);
        assert_eq!(&out[..2], &[0, 255]);
        let mut out = Vec::new();
        frame_into(&mut out, 0, &[7; 256]);
        assert_eq!(&out[..9], &[FLAG_LONG, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(out.len(), 9 + 256);
    }

    #[test]
    fn the_ready_command_names_the_socket_type() {
        let body = ready("DEALER");
        assert_eq!(&body[..6], b"\x05READY");
        assert_eq!(body[6] as usize, "Socket-Type".len());
        assert_eq!(&body[7..18], b"Socket-Type");
        assert_eq!(&body[18..22], &6u32.to_be_bytes());
        assert_eq!(&body[22..], b"DEALER");
        let g = greeting();
        assert_eq!((g[0], g[9], g[10], &g[12..16]), (0xFF, 0x7F, 3, &b"NULL"[..]));
    }
}
