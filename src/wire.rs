//! How a request reaches a pool: as the client sent it, translated between OpenAI chat and
//! Anthropic Messages, or not at all. Pure: decided from the pool's `protocol` and `messages`
//! settings and the endpoint.

use crate::config::{MessagesMode, PoolConfig, Protocol};
use crate::endpoint::{Api, Endpoint};

/// The shape a request takes on its way to one pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wire {
    /// Forwarded in the client's API, with `model` rewritten.
    #[default]
    Same,
    /// A Messages request sent to an OpenAI backend as chat completions.
    MessagesToChat,
    /// A chat request sent to an Anthropic upstream as Messages.
    ChatToMessages,
    /// `count_tokens` for a pool that cannot count: the gateway answers with its estimate.
    LocalCount,
}

impl Wire {
    /// How `pool` takes `endpoint`; `None` when it cannot serve it at all.
    pub fn of(pool: &PoolConfig, endpoint: Endpoint) -> Option<Self> {
        Some(match (pool.protocol, endpoint) {
            (Protocol::Anthropic, Endpoint::Messages | Endpoint::CountTokens) => Self::Same,
            (Protocol::Anthropic, Endpoint::ChatCompletions) => Self::ChatToMessages,
            (Protocol::Anthropic, _) => return None,
            (Protocol::Openai, Endpoint::Messages | Endpoint::CountTokens)
                if pool.messages == MessagesMode::Native =>
            {
                Self::Same
            }
            (Protocol::Openai, Endpoint::Messages) => Self::MessagesToChat,
            (Protocol::Openai, Endpoint::CountTokens) => Self::LocalCount,
            (Protocol::Openai, _) => Self::Same,
        })
    }

    /// The upstream path when it is not the client's.
    pub fn path(self) -> Option<&'static str> {
        match self {
            Self::Same | Self::LocalCount => None,
            Self::MessagesToChat => Some(Endpoint::ChatCompletions.path()),
            Self::ChatToMessages => Some(Endpoint::Messages.path()),
        }
    }
}

/// The API a pool's backends speak.
pub fn pool_api(pool: &PoolConfig) -> Api {
    match pool.protocol {
        Protocol::Openai => Api::OpenAi,
        Protocol::Anthropic => Api::Anthropic,
    }
}
