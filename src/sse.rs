//! Incremental `text/event-stream` framing and per-event rewriting; pure, no Pingora types.
//!
//! Events are forwarded as soon as their terminating blank line arrives. Bytes of events that
//! need no change (comments such as `: ping`, `[DONE]`, non-JSON data) are copied verbatim, and
//! line endings (`\n`, `\r\n`, `\r`) are preserved, so the same upstream bytes give the same
//! client bytes however the network splits them.

use crate::anthropic::{native, MessagesUsage, StreamTranslator};
use crate::endpoint::StreamKind;
use crate::openai::{json_string, rewrite_response_object_json, rewrite_responses_event, Usage};

/// An event larger than this is forwarded unmodified rather than buffered further.
pub const MAX_EVENT_BYTES: usize = 8_388_608; // 8 MiB

/// What one `feed` call observed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FeedReport {
    /// An event with at least one choice was seen for the first time in this call.
    pub first_choice: bool,
}

/// Rewrites a chat/completions stream: restores `model`, captures `usage`, strips the usage
/// chunk the gateway injected when the client did not ask for it.
#[derive(Debug)]
pub struct StreamRewriter {
    pending: Vec<u8>,
    /// Where the scan for line ends resumes inside `pending`.
    scan: usize,
    line_start: usize,
    /// The client's model name as a JSON string literal, encoded once per stream.
    client_model_json: String,
    kind: StreamKind,
    strip_injected_usage: bool,
    usage: Option<Usage>,
    seen_choice: bool,
    choice_events: u64,
    done: bool,
    events: u64,
    oversize_flushes: u64,
    /// Messages usage so far (its events report fields apart, each cumulative).
    messages_usage: MessagesUsage,
    /// Set when the stream is translated from another API rather than rewritten.
    translator: Option<Box<dyn StreamTranslator>>,
    /// A Responses stream's response id.
    response_id: Option<String>,
}

impl StreamRewriter {
    /// A chat/completions stream rewriter.
    pub fn new(client_model: &str, strip_injected_usage: bool) -> Self {
        Self::for_kind(StreamKind::Chunks, client_model, strip_injected_usage)
    }

    /// A rewriter for `kind` of stream (Responses events never carry an injected usage chunk).
    pub fn for_kind(kind: StreamKind, client_model: &str, strip_injected_usage: bool) -> Self {
        Self {
            pending: Vec::new(),
            scan: 0,
            line_start: 0,
            client_model_json: json_string(client_model),
            kind,
            strip_injected_usage,
            usage: None,
            seen_choice: false,
            choice_events: 0,
            done: false,
            events: 0,
            oversize_flushes: 0,
            messages_usage: MessagesUsage::default(),
            translator: None,
            response_id: None,
        }
    }

    /// The response id a Responses stream announced in `response.created`.
    pub fn response_id(&self) -> Option<&str> {
        self.response_id.as_deref()
    }

    /// A stream translated into the client's API event by event by `t`: every upstream event
    /// goes to the translator, and only what it makes reaches the client.
    pub fn translating(t: Box<dyn StreamTranslator>) -> Self {
        let mut rw = Self::for_kind(StreamKind::Chunks, "", false);
        rw.translator = Some(t);
        rw
    }

    /// The last usage the upstream reported.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether the stream's end was seen: `data: [DONE]`, or a Responses terminal event.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Events that carried a choice: about one token each, what a cut stream is charged.
    pub fn choice_events(&self) -> u64 {
        self.choice_events
    }

    /// Whether any event reached the client side of the rewriter.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn oversize_flushes(&self) -> u64 {
        self.oversize_flushes
    }

    /// Consumes `chunk` and appends every event it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> FeedReport {
        let had_choice = self.seen_choice;
        self.pending.extend_from_slice(chunk);
        let mut event_start = 0;
        let mut i = self.scan;
        let buf_len = self.pending.len();
        while i < buf_len {
            let term = match self.pending[i] {
                b'\n' => 1,
                b'\r' if i + 1 < buf_len => 1 + usize::from(self.pending[i + 1] == b'\n'),
                b'\r' => break, // a '\n' may follow in the next read
                _ => {
                    i += 1;
                    continue;
                }
            };
            let blank = i == self.line_start;
            i += term;
            self.line_start = i;
            if blank {
                let event = std::mem::take(&mut self.pending);
                self.emit(&event[event_start..i], out);
                self.pending = event;
                event_start = i;
            }
        }
        self.pending.drain(..event_start);
        self.scan = i - event_start;
        self.line_start -= event_start;
        if self.pending.len() > MAX_EVENT_BYTES {
            self.oversize_flushes += 1;
            // a translated stream never passes the other API's bytes on: the event is dropped
            if self.translator.is_none() {
                out.extend_from_slice(&self.pending);
            }
            self.reset_pending();
        }
        FeedReport {
            first_choice: !had_choice && self.seen_choice,
        }
    }

    /// End of stream: whatever is buffered (an unterminated last event) goes out verbatim, or
    /// for a translated stream is translated as the last event.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.translator.is_some() {
            let last = std::mem::take(&mut self.pending);
            if !last.is_empty() {
                self.emit(&last, out);
            }
        } else {
            out.extend_from_slice(&self.pending);
        }
        self.reset_pending();
    }

    fn reset_pending(&mut self) {
        self.pending.clear();
        self.scan = 0;
        self.line_start = 0;
    }

    fn emit(&mut self, event: &[u8], out: &mut Vec<u8>) {
        self.events += 1;
        if self.translator.is_some() {
            self.translate(event, out);
            return;
        }
        let mut data_lines = lines(event).filter(|l| l.field == b"data");
        let Some(first) = data_lines.next() else {
            out.extend_from_slice(event); // comment-only or blank: keep as is
            return;
        };
        if data_lines.next().is_some() {
            self.emit_multiline(event, out);
            return;
        }
        let value = first.value;
        if value == b"[DONE]" {
            self.done = true;
        }
        match self.rewrite_payload(value) {
            Payload::Drop => {}
            Payload::Keep => out.extend_from_slice(event),
            Payload::Replace(new) => {
                out.extend_from_slice(&event[..first.value_start]);
                out.extend_from_slice(&new);
                out.extend_from_slice(&event[first.value_start + value.len()..]);
            }
        }
    }

    /// Hands the event's data (several `data:` lines joined) to the translator; comments and
    /// data-less events make nothing.
    fn translate(&mut self, event: &[u8], out: &mut Vec<u8>) {
        let mut data: Vec<&[u8]> = lines(event)
            .filter(|l| l.field == b"data")
            .map(|l| l.value)
            .collect();
        let joined;
        let payload = match data.len() {
            0 => return,
            1 => data.remove(0),
            _ => {
                joined = data.join(&b'\n');
                &joined[..]
            }
        };
        let Some(t) = self.translator.as_mut() else {
            return;
        };
        let step = t.data(payload, out);
        if step.usage.is_some() {
            self.usage = step.usage;
        }
        if step.output {
            self.seen_choice = true;
            self.choice_events += 1;
        }
        self.done |= step.done;
    }

    /// Rare: one JSON payload spread over several `data:` lines, joined with `\n` per the spec.
    fn emit_multiline(&mut self, event: &[u8], out: &mut Vec<u8>) {
        let mut joined = Vec::new();
        for l in lines(event).filter(|l| l.field == b"data") {
            if !joined.is_empty() {
                joined.push(b'\n');
            }
            joined.extend_from_slice(l.value);
        }
        let new = match self.rewrite_payload(&joined) {
            Payload::Drop => return,
            Payload::Keep => {
                out.extend_from_slice(event);
                return;
            }
            Payload::Replace(new) => new,
        };
        let mut wrote_data = false;
        for l in lines(event) {
            if l.field != b"data" {
                out.extend_from_slice(l.raw);
            } else if !std::mem::replace(&mut wrote_data, true) {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&new);
                out.extend_from_slice(l.terminator);
            }
        }
    }

    /// What one event's JSON payload becomes, by the kind of stream, noting usage, output
    /// and the end of the stream on the way.
    fn rewrite_payload(&mut self, payload: &[u8]) -> Payload {
        let (bytes, drop) = match self.kind {
            StreamKind::ResponsesEvents => {
                let ev = rewrite_responses_event(payload, &self.client_model_json);
                self.observe_event(&ev);
                (ev.bytes, false)
            }
            StreamKind::MessagesEvents => {
                let ev = native::rewrite_event(payload, &self.client_model_json);
                if let Some(u) = &ev.usage {
                    self.messages_usage.merge(u);
                    self.usage = Some(self.messages_usage.usage());
                }
                if ev.output {
                    self.seen_choice = true;
                    self.choice_events += 1;
                }
                self.done |= ev.terminal;
                (ev.bytes, false)
            }
            StreamKind::Chunks => {
                let r = rewrite_response_object_json(
                    payload,
                    &self.client_model_json,
                    self.strip_injected_usage,
                );
                self.observe(&r);
                (r.bytes, r.drop)
            }
        };
        match (drop, bytes) {
            (true, _) => Payload::Drop,
            (false, None) => Payload::Keep,
            (false, Some(new)) => Payload::Replace(new),
        }
    }

    fn observe_event(&mut self, ev: &crate::openai::ResponsesEvent) {
        if self.response_id.is_none() {
            self.response_id.clone_from(&ev.id);
        }
        if ev.usage.is_some() {
            self.usage = ev.usage;
        }
        if ev.output {
            self.seen_choice = true;
            self.choice_events += 1;
        }
        if ev.terminal {
            self.done = true;
        }
    }

    fn observe(&mut self, r: &crate::openai::ChunkRewrite) {
        if r.usage.is_some() {
            self.usage = r.usage;
        }
        if r.has_choices {
            self.seen_choice = true;
            self.choice_events += 1;
        }
    }
}

/// An event's fate after its payload was looked at.
enum Payload {
    /// The injected usage chunk the client did not ask for.
    Drop,
    Keep,
    Replace(Vec<u8>),
}

struct Line<'a> {
    raw: &'a [u8],
    field: &'a [u8],
    value: &'a [u8],
    /// Offset of `value` inside the event.
    value_start: usize,
    terminator: &'a [u8],
}

/// Splits a complete event into lines with their field name and value (one leading space of the
/// value removed, as the SSE spec says).
fn lines(event: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= event.len() {
            return None;
        }
        let start = pos;
        let rest = &event[start..];
        let end = rest
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
            .unwrap_or(rest.len());
        let term_len = match (rest.get(end), rest.get(end + 1)) {
            (Some(b'\r'), Some(b'\n')) => 2,
            (Some(_), _) => 1,
            (None, _) => 0,
        };
        pos = start + end + term_len;
        let content = &rest[..end];
        let (field, value_off) = match content.iter().position(|b| *b == b':') {
            Some(c) => (
                &content[..c],
                c + 1 + usize::from(content.get(c + 1) == Some(&b' ')),
            ),
            None => (content, content.len()),
        };
        Some(Line {
            raw: &rest[..end + term_len],
            field,
            value: &content[value_off.min(content.len())..],
            value_start: start + value_off.min(content.len()),
            terminator: &rest[end..end + term_len],
        })
    })
}

#[cfg(test)]
mod tests;
