//! What the admin API answers: JSON bodies, and errors in the OpenAI error shape.

use serde_json::{json, Value};

use crate::control::input::InputError;
use crate::store::OpError;

/// A response: status, content type and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// `Allow` for a 405, `WWW-Authenticate` for a 401.
    pub header: Option<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, v: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
            header: None,
        }
    }
}

/// An admin API failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            param: None,
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(401, "invalid_admin_key", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }

    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(400, "invalid_value", message)
        }
    }

    /// The OpenAI `type` the SDKs map the status by.
    fn kind(&self) -> &'static str {
        match self.status {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            503 => "service_unavailable",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn reply(&self) -> Reply {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }});
        let mut r = Reply::json(self.status, &body);
        if self.status == 401 {
            r.header = Some(("www-authenticate", "Bearer".into()));
        }
        r
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        let msg = format!("{}: {}", e.param, e.msg);
        ApiError::bad(&e.param, msg)
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::NotFound(m) => ApiError::not_found(m),
            OpError::Conflict(m) => ApiError::conflict(m),
            OpError::Unavailable(m) => {
                tracing::warn!(error = %m, "admin call refused: the store is unreachable");
                ApiError::new(
                    503,
                    "store_unavailable",
                    "the control-plane store is unreachable; requests are still served with the keys loaded, changes must wait",
                )
            }
            OpError::Other(m) => {
                tracing::error!(error = %m, "admin call failed in the store");
                ApiError::new(
                    500,
                    "store_error",
                    "the store refused the change; see the gateway log",
                )
            }
        }
    }
}

/// A `limit` query value: 1 to `max`.
pub fn page_limit(v: &str, max: usize) -> Result<usize, ApiError> {
    v.parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::bad("limit", format!("limit must be 1 to {max}")))
}

/// `a=1&b=x%20y` as pairs, percent-decoded.
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding, `+` as a space; malformed escapes are kept as written.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|h| (*h as char).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_the_openai_shape_and_status() {
        let r = ApiError::bad("limits.rpm", "limits.rpm: must be a number").reply();
        assert_eq!(r.status, 400);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["param"], "limits.rpm");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let r = ApiError::unauthorized("no").reply();
        assert_eq!(r.header.unwrap().0, "www-authenticate");
        let u: ApiError = OpError::Unavailable("x".into()).into();
        assert_eq!(u.status, 503);
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            query_pairs("tenant=a%20b&user=x+y&flag"),
            vec![
                ("tenant".into(), "a b".into()),
                ("user".into(), "x y".into()),
                ("flag".into(), String::new())
            ]
        );
        assert_eq!(decode("100%"), "100%");
    }
}
