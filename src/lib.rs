//! llmedge: an OpenAI-compatible LLM gateway on Pingora.

pub mod auth;
pub mod config;
pub mod errors;
pub mod openai;
pub mod router;
pub mod sse;
