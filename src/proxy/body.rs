//! Reading a request body: bounded, refusing early what is too large, answering
//! `Expect: 100-continue`; for multipart uploads, only as far as the `model` field.

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use crate::endpoint::{Endpoint, StreamKind};
use crate::errors::GatewayError;
use crate::multipart::Scan;

/// No request reserves more completion tokens than this, whatever `max_tokens` says.
const MAX_COMPLETION_RESERVE: u64 = 10_000_000;

/// What routing and admission need from a request body.
pub struct Incoming {
    /// The client bytes read (the whole body, or a multipart upload's head).
    pub body: Bytes,
    pub model: Option<String>,
    pub stream: bool,
    /// Completion tokens the request may generate, from its cap field or the default.
    pub max_completion: u64,
    /// The prompt's raw text (for token estimates and `hash_key: prompt_prefix`).
    pub prompt: Bytes,
    /// Bytes of request text the prompt-token estimate counts: the prompt, and for Messages
    /// its `system` and `tools` too.
    pub prompt_bytes: usize,
    /// What comes before the prompt in the model's context: Responses `instructions`,
    /// Messages `system` (the canonical prompt `cache_aware` indexes is this, then `prompt`).
    pub prompt_head: Option<Bytes>,
    /// A Responses request's `previous_response_id`.
    pub previous_response: Option<String>,
    /// JSON request fields, for the rewrite (`None` for multipart).
    pub json: Option<crate::openai::RequestHead>,
    pub multipart: Option<MultipartHead>,
}

/// Where a multipart upload's `model` value sits in the head read so far.
pub struct MultipartHead {
    pub model_at: Option<std::ops::Range<usize>>,
    /// The whole body was read (it was small, or `model` came after the file).
    pub complete: bool,
    pub declared: Option<usize>,
    /// Carries on watching the streamed tail for a second `model` field.
    pub watch: crate::multipart::Watch,
}

pub fn json_incoming(
    body: &Bytes,
    obj: &crate::openai::RawObject<'_>,
    mut head: crate::openai::RequestHead,
    endpoint: Endpoint,
    default_max_tokens: u64,
) -> Incoming {
    // only chat and legacy completions streams have a usage chunk to ask for
    head.inject_usage &= endpoint.stream_kind() == Some(StreamKind::Chunks);
    let prompt = ["messages", "prompt", "input", "query", "text_1"]
        .iter()
        .find_map(|f| obj.get(f))
        .map_or_else(|| body.clone(), |v| body.slice_ref(v.get().as_bytes()));
    let head_field = match endpoint {
        Endpoint::Responses => Some("instructions"),
        Endpoint::Messages | Endpoint::CountTokens => Some("system"),
        _ => None,
    };
    let prompt_head = head_field
        .and_then(|f| obj.get(f))
        .filter(|v| v.get() != "null")
        .map(|v| canonical_head(body.slice_ref(v.get().as_bytes())));
    let previous_response = (endpoint == Endpoint::Responses)
        .then(|| obj.get("previous_response_id"))
        .flatten()
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    let mut prompt_bytes = prompt.len();
    if endpoint.api() == crate::endpoint::Api::Anthropic {
        prompt_bytes += ["system", "tools"]
            .iter()
            .filter_map(|f| obj.get(f))
            .map(|v| v.get().len())
            .sum::<usize>();
    }
    let max_completion = if endpoint.generates_tokens() {
        endpoint
            .completion_cap_fields()
            .iter()
            .find_map(|f| obj.get(f)?.get().parse::<u64>().ok())
            .unwrap_or(default_max_tokens)
            .min(MAX_COMPLETION_RESERVE)
    } else {
        0
    };
    Incoming {
        model: head.model.clone(),
        stream: head.stream,
        max_completion,
        prompt,
        prompt_bytes,
        prompt_head,
        previous_response,
        json: Some(head),
        multipart: None,
        body: body.clone(),
    }
}

/// A prompt head as `cache_aware` indexes it: Claude Code's attribution block (a per-request
/// hash at the start of `system`) left out, or no request would ever match another.
fn canonical_head(head: Bytes) -> Bytes {
    if !head.windows(BILLING.len()).any(|w| w == BILLING.as_bytes()) {
        return head;
    }
    let Ok(serde_json::Value::Array(blocks)) = serde_json::from_slice(&head) else {
        return head;
    };
    let kept: Vec<serde_json::Value> = blocks
        .into_iter()
        .filter(|b| !b["text"].as_str().is_some_and(|t| t.starts_with(BILLING)))
        .collect();
    Bytes::from(serde_json::Value::Array(kept).to_string())
}

const BILLING: &str = crate::anthropic::to_chat::BILLING_HEADER;

/// Reads a multipart upload until its `model` field is known: usually the first part, so only
/// the head is held and the file streams through; when `model` comes after the file, up to the
/// whole body (`max` bytes).
pub async fn read_multipart(
    session: &mut Session,
    max: usize,
    request_id: &str,
) -> Result<Incoming, GatewayError> {
    let headers = &session.req_header().headers;
    let boundary = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| crate::multipart::boundary(v.as_bytes()))
        .ok_or_else(|| GatewayError::InvalidParam {
            param: "content-type",
            msg: "expected multipart/form-data with a boundary".into(),
        })?;
    let declared = begin_body(session, max).await?;
    let (buf, model_at, complete) = read_to_model(session, &boundary, max, request_id).await?;
    let complete = complete || session.is_body_done();
    let body = buf.freeze();
    // the gateway routes, allows and prices by this field: a second one, which an upstream
    // reading the last value would run instead, is refused here or while the rest streams
    let mut watch = crate::multipart::Watch::new(&boundary);
    if let Some(r) = &model_at {
        if !watch.feed(&body[r.end..], "model") {
            return Err(GatewayError::InvalidParam {
                param: "model",
                msg: "the form has more than one model field".into(),
            });
        }
    }
    let model = match &model_at {
        Some(r) => Some(
            std::str::from_utf8(&body[r.clone()])
                .map_err(|_| GatewayError::InvalidParam {
                    param: "model",
                    msg: "expected UTF-8 text".into(),
                })?
                .to_string(),
        ),
        None => None,
    };
    Ok(Incoming {
        model,
        stream: false,
        max_completion: 0,
        prompt: Bytes::new(),
        prompt_bytes: 0,
        prompt_head: None,
        previous_response: None,
        json: None,
        multipart: Some(MultipartHead {
            model_at,
            complete,
            declared,
            watch,
        }),
        body,
    })
}

/// Reads until the form's `model` field is found (or known absent): the bytes read, where the
/// value sits, and whether that was the whole body.
async fn read_to_model(
    session: &mut Session,
    boundary: &[u8],
    max: usize,
    request_id: &str,
) -> Result<(BytesMut, Option<std::ops::Range<usize>>, bool), GatewayError> {
    let mut buf = BytesMut::new();
    let mut complete = false;
    let mut scanner = crate::multipart::Scanner::new(boundary);
    loop {
        match scanner.scan(&buf, "model") {
            Scan::Found(r) => return Ok((buf, Some(r), complete)),
            Scan::Absent => return Ok((buf, None, complete)),
            Scan::More if complete => return Ok((buf, None, complete)),
            Scan::More => {}
        }
        match next_chunk(session, request_id).await? {
            Some(c) if buf.len() + c.len() > max => {
                session.set_keepalive(None);
                return Err(GatewayError::BodyTooLarge { limit: max });
            }
            Some(c) => buf.extend_from_slice(&c),
            None => complete = true,
        }
    }
}

/// Before the first body byte: refuses a declared length over `max` (without draining what
/// it will not read) and answers `Expect: 100-continue`; returns the declared length.
async fn begin_body(session: &mut Session, max: usize) -> Result<Option<usize>, GatewayError> {
    let headers = &session.req_header().headers;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let expects_continue = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|n| n > max) {
        session.set_keepalive(None);
        return Err(GatewayError::BodyTooLarge { limit: max });
    }
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|_| GatewayError::Internal)?;
    }
    Ok(declared)
}

async fn next_chunk(
    session: &mut Session,
    request_id: &str,
) -> Result<Option<Bytes>, GatewayError> {
    session.read_request_body().await.map_err(|e| {
        tracing::debug!(request_id, error = %e, "reading request body failed");
        GatewayError::InvalidParam {
            param: "body",
            msg: "the request body could not be read".into(),
        }
    })
}

/// Reads the whole body, refusing it as soon as it passes `max` bytes.
pub async fn read_body(
    session: &mut Session,
    max: usize,
    request_id: &str,
) -> Result<Bytes, GatewayError> {
    let too_large = GatewayError::BodyTooLarge { limit: max };
    let declared = begin_body(session, max).await?;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(max));
    loop {
        let chunk = next_chunk(session, request_id).await?;
        let Some(chunk) = chunk else { break };
        if buf.len() + chunk.len() > max {
            session.set_keepalive(None);
            return Err(too_large);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_codes_attribution_block_is_not_part_of_the_indexed_prompt() {
        let a = br#"[{"type":"text","text":"x-anthropic-billing-header: cc_version=2; cch=1a2b;"},{"type":"text","text":"You are Claude Code."}]"#;
        let b = br#"[{"type":"text","text":"x-anthropic-billing-header: cc_version=2; cch=9f8e;"},{"type":"text","text":"You are Claude Code."}]"#;
        let (ha, hb) = (
            canonical_head(Bytes::from_static(a)),
            canonical_head(Bytes::from_static(b)),
        );
        assert_eq!(
            ha, hb,
            "two requests differing only in the nonce index alike"
        );
        assert!(!ha.windows(4).any(|w| w == b"cch="));
        let plain = Bytes::from_static(br#""You are terse.""#);
        assert_eq!(canonical_head(plain.clone()), plain);
    }
}
