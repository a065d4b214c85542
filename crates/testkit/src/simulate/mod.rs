//! A simulated Metal3 management cluster: the objects the providers would write
//! ([`world`]) and a stand-in for CAPM3's half of the loop ([`capm3`]). For the
//! integration tests and the demo; the controller never uses it.

pub mod capm3;
pub mod world;
