//! Every failure a client, an operator or the process can see, with its status, OpenAI body and label.

use http::StatusCode;

use crate::endpoint::Api;
use serde_json::json;

/// A request-path failure. Each variant decides, by exhaustive match, the HTTP status, the OpenAI
/// error `type` and `code`, and a low-cardinality label for metrics and the access log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("you didn't provide an API key; send it as `Authorization: Bearer <key>`")]
    MissingApiKey,
    #[error("incorrect API key provided")]
    InvalidApiKey,
    /// A `credentials: client` pool needs the caller's own provider key.
    #[error("this model's pool uses your own provider key: send it in the `x-llmedge-upstream-key` header")]
    MissingUpstreamKey,
    #[error("the model `{0}` does not exist or you do not have access to it")]
    UnknownModel(String),
    #[error("the model `{0}` does not exist or you do not have access to it")]
    ModelNotAllowed(String),
    #[error("the model `{model}` is not served on {path}")]
    EndpointNotServed { model: String, path: &'static str },
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("we could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    #[error("invalid value for `{param}`: {msg}")]
    InvalidParam { param: &'static str, msg: String },
    #[error("you must provide a model parameter")]
    MissingModel,
    #[error("unknown request URL: {method} {path}")]
    UnknownPath { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: String,
        path: String,
        /// The `Allow` header value: the methods the path answers.
        allow: &'static str,
    },
    #[error("pool `{0}` has no usable backend")]
    NoBackend(String),
    /// Every backend that could serve the request asked the gateway to back off (its own 429
    /// with `Retry-After`); the client is told what the backend would have said.
    #[error("the upstream is rate limited; please try again in {retry}")]
    UpstreamPaused { retry: String, retry_after_ms: u64 },
    #[error("upstream is unreachable")]
    UpstreamUnreachable,
    #[error("upstream did not accept the connection in time")]
    UpstreamConnectTimeout,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream sent no response within the first-byte timeout")]
    FirstByteTimeout,
    #[error("upstream stream stalled longer than the idle timeout")]
    IdleTimeout,
    #[error("upstream response exceeded the total timeout")]
    TotalTimeout,
    #[error("this API key may not choose pool `{0}`")]
    PoolNotAllowed(String),
    #[error("every backend that could serve this request answered {0}")]
    UpstreamStatus(u16),
    #[error("the upstream provider rejected the gateway's credentials")]
    UpstreamAuth,
    #[error(
        "rate limit reached for {scope} on {what}: limit {limit}; please try again in {retry}"
    )]
    RateLimited {
        /// `requests` (rpm, concurrency) or `tokens` (tpm): OpenAI's error type.
        kind: &'static str,
        what: &'static str,
        scope: String,
        limit: u64,
        retry: String,
        retry_after_ms: u64,
    },
    #[error("you exceeded your current quota: the {window} budget of {scope} (${limit}) is spent")]
    QuotaExceeded {
        window: &'static str,
        scope: String,
        limit: String,
    },
    #[error("upstream closed the connection before the response completed")]
    UpstreamClosed,
    #[error("upstream sent an invalid response")]
    UpstreamProtocol,
    #[error("the gateway is shutting down; retry the request")]
    ShuttingDown,
    /// `state.on_error: deny` while the shared limit store is unreachable.
    #[error("the gateway cannot check your limits right now (its shared limit store is unreachable); please retry shortly")]
    StateUnavailable,
    #[error("the server had an error while processing your request")]
    Internal,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingApiKey | Self::InvalidApiKey | Self::MissingUpstreamKey => {
                StatusCode::UNAUTHORIZED
            }
            Self::UnknownModel(_)
            | Self::ModelNotAllowed(_)
            | Self::UnknownPath { .. }
            | Self::EndpointNotServed { .. } => StatusCode::NOT_FOUND,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidJson(_) | Self::InvalidParam { .. } | Self::MissingModel => {
                StatusCode::BAD_REQUEST
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoBackend(_) | Self::ShuttingDown | Self::StateUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamUnreachable
            | Self::UpstreamClosed
            | Self::UpstreamProtocol
            | Self::UpstreamAuth => StatusCode::BAD_GATEWAY,
            Self::UpstreamConnectTimeout
            | Self::UpstreamTimeout
            | Self::FirstByteTimeout
            | Self::IdleTimeout
            | Self::TotalTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::PoolNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::QuotaExceeded { .. } | Self::UpstreamPaused { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UpstreamStatus(code) => {
                StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `error.type`, which SDKs use to pick the exception class.
    pub fn openai_type(&self) -> &'static str {
        match self {
            Self::MissingApiKey | Self::InvalidApiKey | Self::MissingUpstreamKey => {
                "invalid_request_error"
            }
            Self::UnknownModel(_)
            | Self::ModelNotAllowed(_)
            | Self::EndpointNotServed { .. }
            | Self::BodyTooLarge { .. }
            | Self::InvalidJson(_)
            | Self::InvalidParam { .. }
            | Self::MissingModel
            | Self::UnknownPath { .. }
            | Self::PoolNotAllowed(_)
            | Self::MethodNotAllowed { .. } => "invalid_request_error",
            Self::UpstreamStatus(429) | Self::UpstreamPaused { .. } => "requests",
            Self::RateLimited { kind, .. } => kind,
            Self::QuotaExceeded { .. } => "insufficient_quota",
            Self::StateUnavailable => "service_unavailable",
            Self::NoBackend(_)
            | Self::UpstreamStatus(_)
            | Self::UpstreamAuth
            | Self::UpstreamUnreachable
            | Self::UpstreamConnectTimeout
            | Self::UpstreamTimeout
            | Self::FirstByteTimeout
            | Self::IdleTimeout
            | Self::TotalTimeout
            | Self::UpstreamClosed
            | Self::UpstreamProtocol
            | Self::ShuttingDown
            | Self::Internal => "server_error",
        }
    }

    /// The OpenAI `error.code`, or `None` where OpenAI sends `null`.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::MissingApiKey | Self::InvalidApiKey => Some("invalid_api_key"),
            Self::MissingUpstreamKey => Some("missing_upstream_key"),
            Self::UnknownModel(_) | Self::ModelNotAllowed(_) => Some("model_not_found"),
            Self::EndpointNotServed { .. } => Some("unsupported_endpoint"),
            Self::BodyTooLarge { .. } => Some("request_too_large"),
            Self::UnknownPath { .. } => Some("unknown_url"),
            Self::InvalidJson(_) | Self::InvalidParam { .. } | Self::MissingModel => None,
            Self::MethodNotAllowed { .. } => Some("method_not_allowed"),
            Self::NoBackend(_) => Some("no_backend"),
            Self::UpstreamUnreachable => Some("upstream_unreachable"),
            Self::UpstreamConnectTimeout
            | Self::UpstreamTimeout
            | Self::FirstByteTimeout
            | Self::IdleTimeout
            | Self::TotalTimeout => Some("upstream_timeout"),
            Self::PoolNotAllowed(_) => Some("pool_not_allowed"),
            Self::UpstreamStatus(429) | Self::RateLimited { .. } | Self::UpstreamPaused { .. } => {
                Some("rate_limit_exceeded")
            }
            Self::QuotaExceeded { .. } => Some("insufficient_quota"),
            Self::UpstreamStatus(_) => Some("upstream_error"),
            Self::UpstreamAuth => Some("upstream_auth_failed"),
            Self::UpstreamClosed => Some("upstream_closed"),
            Self::UpstreamProtocol => Some("upstream_protocol_error"),
            Self::ShuttingDown => Some("server_shutting_down"),
            Self::StateUnavailable => Some("service_unavailable"),
            Self::Internal => Some("internal_error"),
        }
    }

    /// The offending request parameter, as OpenAI reports it in `error.param`.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::UnknownModel(_)
            | Self::ModelNotAllowed(_)
            | Self::EndpointNotServed { .. }
            | Self::MissingModel => Some("model"),
            Self::InvalidParam { param, .. } => Some(param),
            Self::PoolNotAllowed(_) => Some("x-llmedge-pool"),
            Self::MissingUpstreamKey => Some("x-llmedge-upstream-key"),
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::BodyTooLarge { .. }
            | Self::InvalidJson(_)
            | Self::UnknownPath { .. }
            | Self::MethodNotAllowed { .. }
            | Self::NoBackend(_)
            | Self::UpstreamUnreachable
            | Self::UpstreamConnectTimeout
            | Self::UpstreamTimeout
            | Self::FirstByteTimeout
            | Self::IdleTimeout
            | Self::TotalTimeout
            | Self::UpstreamStatus(_)
            | Self::UpstreamAuth
            | Self::RateLimited { .. }
            | Self::UpstreamPaused { .. }
            | Self::QuotaExceeded { .. }
            | Self::UpstreamClosed
            | Self::UpstreamProtocol
            | Self::ShuttingDown
            | Self::StateUnavailable
            | Self::Internal => None,
        }
    }

    /// A closed-set label for metrics and logs; never carries request data.
    pub fn label(&self) -> &'static str {
        match self {
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::MissingUpstreamKey => "missing_upstream_key",
            Self::UnknownModel(_) => "unknown_model",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::EndpointNotServed { .. } => "endpoint_not_served",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidParam { .. } => "invalid_param",
            Self::MissingModel => "missing_model",
            Self::UnknownPath { .. } => "unknown_path",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::NoBackend(_) => "no_backend",
            Self::UpstreamPaused { .. } => "upstream_paused",
            Self::UpstreamUnreachable => "connect_error",
            Self::UpstreamConnectTimeout => "connect_timeout",
            Self::UpstreamTimeout => "read_timeout",
            Self::FirstByteTimeout => "first_byte_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::TotalTimeout => "total_timeout",
            Self::PoolNotAllowed(_) => "pool_not_allowed",
            Self::UpstreamStatus(429) => "status_429",
            Self::UpstreamStatus(_) => "status_5xx",
            Self::UpstreamAuth => "upstream_auth",
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExceeded { .. } => "insufficient_quota",
            Self::UpstreamClosed => "upstream_closed",
            Self::UpstreamProtocol => "upstream_protocol",
            Self::ShuttingDown => "shutdown",
            Self::StateUnavailable => "state_unavailable",
            Self::Internal => "internal",
        }
    }

    /// Whether the failure lies with the upstream (counted in `llmedge_upstream_errors_total`).
    pub fn is_upstream(&self) -> bool {
        match self {
            Self::NoBackend(_)
            | Self::UpstreamPaused { .. }
            | Self::UpstreamUnreachable
            | Self::UpstreamConnectTimeout
            | Self::UpstreamTimeout
            | Self::FirstByteTimeout
            | Self::IdleTimeout
            | Self::TotalTimeout
            | Self::UpstreamStatus(_)
            | Self::UpstreamAuth
            | Self::UpstreamClosed
            | Self::UpstreamProtocol => true,
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::MissingUpstreamKey
            | Self::UnknownModel(_)
            | Self::ModelNotAllowed(_)
            | Self::EndpointNotServed { .. }
            | Self::BodyTooLarge { .. }
            | Self::InvalidJson(_)
            | Self::InvalidParam { .. }
            | Self::MissingModel
            | Self::UnknownPath { .. }
            | Self::MethodNotAllowed { .. }
            | Self::PoolNotAllowed(_)
            | Self::RateLimited { .. }
            | Self::QuotaExceeded { .. }
            | Self::ShuttingDown
            | Self::StateUnavailable
            | Self::Internal => false,
        }
    }

    /// The OpenAI-shaped JSON error object, `{"error":{"message","type","param","code"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.to_string(),
                "type": self.openai_type(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }

    pub fn body(&self) -> bytes::Bytes {
        bytes::Bytes::from(self.to_json().to_string())
    }

    /// A final SSE event carrying this error, for failures after a stream has started.
    pub fn sse_event(&self) -> bytes::Bytes {
        bytes::Bytes::from(format!("data: {}\n\n", self.to_json()))
    }

    /// Anthropic's shape, `{"type":"error","error":{"type","message"}}`, the type following
    /// the status as Anthropic's SDKs expect.
    pub fn to_anthropic_json(&self) -> serde_json::Value {
        let message = match self {
            Self::MissingApiKey => {
                "x-api-key header is required (or `Authorization: Bearer <key>`)".to_string()
            }
            other => other.to_string(),
        };
        anthropic_error_json(self.status().as_u16(), &message)
    }

    /// The error body in the shape of the client's API.
    pub fn body_for(&self, api: Api) -> bytes::Bytes {
        match api {
            Api::OpenAi => self.body(),
            Api::Anthropic => bytes::Bytes::from(self.to_anthropic_json().to_string()),
        }
    }

    /// The final SSE event for the client's API (Anthropic's needs its `event:` line).
    pub fn sse_event_for(&self, api: Api) -> bytes::Bytes {
        match api {
            Api::OpenAi => self.sse_event(),
            Api::Anthropic => bytes::Bytes::from(format!(
                "event: error\ndata: {}\n\n",
                self.to_anthropic_json()
            )),
        }
    }
}

/// Anthropic's error `type` for an HTTP status, which its SDKs map to exception classes.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// `{"type":"error","error":{"type":…,"message":…}}`.
pub fn anthropic_error_json(status: u16, message: &str) -> serde_json::Value {
    json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})
}

/// A configuration problem. The message names the field path; `main` prints it and exits 64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct ConfigError {
    pub path: String,
    pub msg: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// A failure while starting the server after the config was accepted (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_openai_shape() {
        let v = GatewayError::InvalidApiKey.to_json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(v["error"]["param"].is_null());
        assert_eq!(v["error"]["message"], "incorrect API key provided");
    }

    #[test]
    fn unknown_and_forbidden_model_look_the_same_to_the_client() {
        let a = GatewayError::UnknownModel("m".into());
        let b = GatewayError::ModelNotAllowed("m".into());
        assert_eq!(
            a.to_json(),
            b.to_json(),
            "must not reveal that a model exists"
        );
        assert_eq!(a.status(), StatusCode::NOT_FOUND);
        assert_ne!(a.label(), b.label(), "operators still see the difference");
    }

    #[test]
    fn statuses_follow_openai() {
        assert_eq!(GatewayError::MissingApiKey.status(), 401);
        assert_eq!(GatewayError::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(GatewayError::InvalidJson("x".into()).status(), 400);
        assert_eq!(GatewayError::UpstreamUnreachable.status(), 502);
        assert_eq!(GatewayError::UpstreamTimeout.status(), 504);
        assert_eq!(GatewayError::UpstreamConnectTimeout.status(), 504);
    }

    #[test]
    fn sse_error_event_is_one_complete_event() {
        let ev = GatewayError::UpstreamClosed.sse_event();
        let s = std::str::from_utf8(&ev).unwrap();
        assert!(s.starts_with("data: {\"error\":"));
        assert!(s.ends_with("\n\n"));
    }

    #[test]
    fn config_error_names_the_path() {
        let e = ConfigError::new("routes[1].pool", "unknown pool \"opena\"");
        assert_eq!(e.to_string(), "routes[1].pool: unknown pool \"opena\"");
    }
}
