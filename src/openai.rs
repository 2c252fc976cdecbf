//! OpenAI wire formats we read or write: request rewrite, response `model` restore, usage capture.
//!
//! Bodies are handled as a top-level object whose values stay raw JSON text: only the fields we
//! change are re-encoded, so every other field (tools, `guided_json`, numbers such as `1e5`)
//! reaches the other side byte for byte, and no JSON tree is built on the hot path.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::errors::GatewayError;

/// Token usage as reported by the upstream. The Responses API and image endpoints call the
/// same counts `input_tokens` / `output_tokens`; both spellings feed the same counters.
/// Anthropic's usage counts cache reads and cache writes apart from `input_tokens`: they are
/// added to the prompt, and cache reads are its cached part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "WireUsage")]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: Option<PromptDetails>,
}

/// Every spelling of usage the upstreams send.
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default, alias = "input_tokens_details")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Self {
        let (read, write) = (
            w.cache_read_input_tokens.unwrap_or(0),
            w.cache_creation_input_tokens.unwrap_or(0),
        );
        let prompt = w.prompt_tokens.unwrap_or(0) + read + write;
        let completion = w.completion_tokens.unwrap_or(0);
        let details = match (w.prompt_tokens_details, w.cache_read_input_tokens) {
            (Some(d), _) => Some(d),
            (None, Some(r)) => Some(PromptDetails {
                cached_tokens: Some(r),
            }),
            (None, None) => None,
        };
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: w.total_tokens.unwrap_or(prompt + completion),
            prompt_tokens_details: details,
        }
    }
}

impl Usage {
    /// Anthropic's counts (Messages `usage`): cache reads and writes are part of the prompt,
    /// cache reads its cached part.
    pub fn from_anthropic(
        input: Option<u64>,
        output: Option<u64>,
        cache_read: Option<u64>,
        cache_write: Option<u64>,
    ) -> Self {
        Self::from(WireUsage {
            prompt_tokens: input,
            completion_tokens: output,
            total_tokens: None,
            prompt_tokens_details: None,
            cache_read_input_tokens: cache_read,
            cache_creation_input_tokens: cache_write,
        })
    }

    /// OpenAI's `usage` object for these counts.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached()},
        })
    }

    /// Prompt tokens served from the upstream's prompt cache.
    pub fn cached(&self) -> u64 {
        self.prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

/// A JSON object as an ordered list of `(key, raw value)` pairs borrowed from the input.
pub struct RawObject<'a> {
    fields: Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawObject<'a> {
    pub fn parse(input: &'a [u8]) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(input);
        let fields = (&mut de).deserialize_map(FieldsVisitor)?;
        de.end()?;
        Ok(Self { fields })
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    pub fn has(&self, key: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == key)
    }

    /// Writes the object compactly; `edit` returns `Some(replacement)` to change a value,
    /// `Some(None)` to drop the field, `None` to keep the raw value. `extra` fields go last.
    pub fn write<'e, F>(&self, out: &mut Vec<u8>, mut edit: F, extra: &[(&str, &str)])
    where
        F: FnMut(&str, &RawValue) -> Option<Option<Cow<'e, str>>>,
    {
        out.push(b'{');
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        for (k, v) in &self.fields {
            let value = match edit(k, v) {
                None => v.get(),
                Some(None) => continue,
                Some(Some(s)) => {
                    sep(out);
                    write_key(out, k);
                    out.extend_from_slice(s.as_bytes());
                    continue;
                }
            };
            sep(out);
            write_key(out, k);
            out.extend_from_slice(value.as_bytes());
        }
        for (k, v) in extra {
            sep(out);
            write_key(out, k);
            out.extend_from_slice(v.as_bytes());
        }
        out.push(b'}');
    }
}

fn write_key(out: &mut Vec<u8>, k: &str) {
    // keys are almost always plain ASCII: copy them without an allocation
    if k.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(json_string(k).as_bytes());
    }
    out.push(b':');
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Vec<(std::borrow::Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(k) = map.next_key::<Key<'de>>()? {
            let v: &'de RawValue = map.next_value()?;
            fields.push((k.0, v));
        }
        Ok(fields)
    }
}

struct Key<'a>(std::borrow::Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

// === requests ===

/// What the gateway learned from a client request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The client-facing model name (`None` when the body has no `model`).
    pub model: Option<String>,
    pub stream: bool,
    /// Whether the client itself asked for `stream_options.include_usage: true`.
    pub client_include_usage: bool,
    /// Whether the rewrite adds `stream_options.include_usage: true` (chat and legacy
    /// completions streams whose client did not ask; the caller turns it off elsewhere).
    pub inject_usage: bool,
}

/// Parses the fields the gateway needs; any JSON that is not an object is a 400.
pub fn inspect_request(body: &[u8]) -> Result<(RawObject<'_>, RequestHead), GatewayError> {
    let obj = RawObject::parse(body).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let model = match obj.get("model") {
        None => None,
        Some(v) if v.get() == "null" => None,
        Some(v) => Some(serde_json::from_str::<String>(v.get()).map_err(|_| {
            GatewayError::InvalidParam {
                param: "model",
                msg: "expected a string".into(),
            }
        })?),
    };
    let stream = match obj.get("stream").map(RawValue::get) {
        None | Some("null") | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(GatewayError::InvalidParam {
                param: "stream",
                msg: "expected a boolean".into(),
            })
        }
    };
    let client_include_usage = match obj.get("stream_options") {
        None => false,
        Some(v) if v.get() == "null" => false,
        Some(v) => {
            let opts: serde_json::Map<String, serde_json::Value> = serde_json::from_str(v.get())
                .map_err(|_| GatewayError::InvalidParam {
                    param: "stream_options",
                    msg: "expected an object".into(),
                })?;
            opts.get("include_usage") == Some(&serde_json::Value::Bool(true))
        }
    };
    Ok((
        obj,
        RequestHead {
            model,
            stream,
            client_include_usage,
            inject_usage: stream && !client_include_usage,
        },
    ))
}

/// Rewrites `model` to `upstream_model` and, for streams, forces `include_usage: true`.
/// Returns `None` when the original bytes can be forwarded unchanged.
pub fn rewrite_request(
    obj: &RawObject<'_>,
    head: &RequestHead,
    upstream_model: &str,
) -> Option<Vec<u8>> {
    let model_changes = head.model.as_deref() != Some(upstream_model);
    let usage_changes = head.inject_usage;
    if !model_changes && !usage_changes {
        return None;
    }
    let model_json = json_string(upstream_model);
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if !obj.has("model") {
        extra.push(("model", &model_json)); // a `"model": null` is rewritten in place instead
    }
    let has_opts = obj.get("stream_options").is_some_and(|v| v.get() != "null");
    if usage_changes && !has_opts {
        extra.push(("stream_options", r#"{"include_usage":true}"#));
    }
    let mut out = Vec::with_capacity(obj_len_hint(obj) + 64);
    obj.write(
        &mut out,
        |k, v| match k {
            "model" => Some(Some(Cow::Borrowed(model_json.as_str()))),
            "stream_options" if usage_changes && has_opts => {
                let mut opts: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(v.get()).ok()?;
                opts.insert("include_usage".into(), serde_json::Value::Bool(true));
                Some(Some(Cow::Owned(
                    serde_json::Value::Object(opts).to_string(),
                )))
            }
            "stream_options" if usage_changes => Some(None),
            _ => None,
        },
        &extra,
    );
    Some(out)
}

fn obj_len_hint(obj: &RawObject<'_>) -> usize {
    obj.fields
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum()
}

// === responses ===

/// What rewriting one JSON response object (or one SSE `data:` payload) did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChunkRewrite {
    /// Replacement bytes; `None` keeps the input unchanged.
    pub bytes: Option<Vec<u8>>,
    /// Drop the whole event: the usage-only chunk that the gateway injected.
    pub drop: bool,
    pub usage: Option<Usage>,
    /// The chunk carries at least one choice (first-token timing).
    pub has_choices: bool,
}

/// Restores the client's model name and captures usage. With `strip_injected_usage`, the
/// usage-only chunk is marked for dropping and `"usage": null` fields are removed, so a client
/// that did not ask for usage sees the stream it would have seen without the gateway.
pub fn rewrite_response_object(
    input: &[u8],
    client_model: &str,
    strip_injected_usage: bool,
) -> ChunkRewrite {
    rewrite_response_object_json(input, &json_string(client_model), strip_injected_usage)
}

/// [`rewrite_response_object`] with the client model already encoded as a JSON string literal
/// (`"ollama/llama3"` with its quotes), so a stream encodes it once, not per event.
pub fn rewrite_response_object_json(
    input: &[u8],
    model_json: &str,
    strip_injected_usage: bool,
) -> ChunkRewrite {
    let Ok(obj) = RawObject::parse(input) else {
        return ChunkRewrite::default();
    };
    let usage = obj
        .get("usage")
        .filter(|v| v.get() != "null")
        .and_then(|v| serde_json::from_str::<Usage>(v.get()).ok());
    let choices = obj.get("choices").map(RawValue::get);
    let has_choices = choices.is_some_and(|c| c.trim_start_matches('[').trim_start() != "]");
    if strip_injected_usage && usage.is_some() && !has_choices && choices.is_some() {
        return ChunkRewrite {
            bytes: None,
            drop: true,
            usage,
            has_choices,
        };
    }
    let model_differs = obj.get("model").is_some_and(|m| m.get() != model_json);
    let null_usage = strip_injected_usage && obj.get("usage").is_some_and(|v| v.get() == "null");
    let bytes = (model_differs || null_usage).then(|| {
        let mut out = Vec::with_capacity(input.len() + model_json.len());
        obj.write(
            &mut out,
            |k, v| match k {
                "model" => Some(Some(Cow::Borrowed(model_json))),
                "usage" if strip_injected_usage && v.get() == "null" => Some(None),
                _ => None,
            },
            &[],
        );
        out
    });
    ChunkRewrite {
        bytes,
        drop: false,
        usage,
        has_choices,
    }
}

/// One Responses API stream event: restores `response.model`, captures `response.usage`, and
/// reports output deltas (first-token timing) and the terminal events.
pub fn rewrite_responses_event(input: &[u8], model_json: &str) -> ResponsesEvent {
    let Ok(obj) = RawObject::parse(input) else {
        return ResponsesEvent::default();
    };
    let kind = obj
        .get("type")
        .and_then(|t| serde_json::from_str::<Cow<'_, str>>(t.get()).ok())
        .unwrap_or_default();
    let mut ev = ResponsesEvent {
        output: kind.ends_with(".delta"),
        terminal: matches!(
            &*kind,
            "response.completed" | "response.failed" | "response.incomplete" | "error"
        ),
        ..ResponsesEvent::default()
    };
    let Some(resp) = obj.get("response") else {
        return ev;
    };
    if kind == "response.created" {
        ev.id = object_id(resp.get().as_bytes());
    }
    let inner = rewrite_response_object_json(resp.get().as_bytes(), model_json, false);
    ev.usage = inner.usage;
    // the rewritten object came from JSON text, so it is UTF-8: moved, not copied
    ev.bytes = inner
        .bytes
        .and_then(|new| String::from_utf8(new).ok())
        .map(|new| {
            let mut out = Vec::with_capacity(input.len() + model_json.len());
            obj.write(
                &mut out,
                |k, _| (k == "response").then_some(Some(Cow::Borrowed(new.as_str()))),
                &[],
            );
            out
        });
    ev
}

/// What [`rewrite_responses_event`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResponsesEvent {
    pub bytes: Option<Vec<u8>>,
    pub usage: Option<Usage>,
    /// An output delta (text, arguments, reasoning): the first one is the first token.
    pub output: bool,
    /// `response.completed`, `.failed`, `.incomplete` or `error`: the stream's last event.
    pub terminal: bool,
    /// The response's id, from `response.created`.
    pub id: Option<String>,
}

/// The top-level `id` of a JSON object (a Responses answer's response id).
pub fn object_id(input: &[u8]) -> Option<String> {
    let obj = RawObject::parse(input).ok()?;
    serde_json::from_str::<String>(obj.get("id")?.get()).ok()
}

#[cfg(test)]
mod tests;
