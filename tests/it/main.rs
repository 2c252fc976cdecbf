//! Integration tests: the real gateway binary against a mock OpenAI upstream on loopback.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod api;
mod bodies;
mod builtin;
mod chat;
mod cli;
mod control;
mod errors;
mod fleet;
mod ledger;
mod limits;
mod live;
mod messages;
mod ops;
mod passthrough;
mod prefix;
mod shared;
mod streaming;
mod support;
