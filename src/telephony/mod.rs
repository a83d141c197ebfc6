//! Telephony on top of a call: who is on the line ([`call_info`]), cold transfers to a
//! person through the TwiML Twilio runs after the stream ([`transfer`]), and outbound calls
//! and status callbacks through Twilio's REST API ([`outbound`]).

pub mod call_info;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod outbound;
pub mod transfer;
