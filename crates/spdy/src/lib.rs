//! The server side of SPDY/3.1 as the kubelet speaks it for port-forward.
//!
//! The kube-apiserver (through kubectl's client) opens an HTTP/1.1 connection,
//! upgrades it to `SPDY/3.1` and then creates a pair of streams per forwarded
//! connection. No maintained Rust crate serves SPDY, so this crate implements
//! what that client uses: the frames ([`frame`]), their wire codec with header
//! compression ([`codec`]), a server session that yields streams ([`session`]),
//! and the upgrade negotiation ([`upgrade`]).
//!
//! Flow control is deliberately absent: the Go client (moby/spdystream) never
//! sends WINDOW_UPDATE, so a server enforcing send windows would stall.
//! Memory stays bounded by stopping reading the connection instead.

pub mod codec;
mod dictionary;
pub mod frame;
pub mod session;
pub mod upgrade;

pub use codec::{CodecError, CodecLimits, SpdyCodec};
pub use dictionary::{DICTIONARY, DICTIONARY_ID};
pub use frame::{Frame, GoAwayStatus, HeaderBlockError, Headers, RstStatus, Setting};
pub use session::{Limits, Session, SessionError, Stream};
pub use upgrade::{Accepted, Refused, negotiate};
