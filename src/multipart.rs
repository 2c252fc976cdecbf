//! Just enough `multipart/form-data` (RFC 7578) to route an upload by its `model` field: find
//! the field in the bytes read so far and rewrite its value, leaving every other byte, the file
//! included, untouched. Pure; the proxy streams the rest of the body through.

use std::ops::Range;

/// What the bytes read so far say about a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// The field's value sits at this range of the buffer.
    Found(Range<usize>),
    /// The field has not been seen yet, and the body goes on.
    More,
    /// The closing delimiter came without the field.
    Absent,
}

/// The boundary of a `multipart/form-data; boundary=...` content type.
pub fn boundary(content_type: &[u8]) -> Option<Vec<u8>> {
    let ct = std::str::from_utf8(content_type).ok()?;
    let mut parts = ct.split(';');
    let kind = parts.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = v.trim().trim_matches('"');
            // RFC 2046: 1 to 70 characters
            if (1..=70).contains(&v.len()) {
                return Some(v.as_bytes().to_vec());
            }
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() || from > hay.len() - needle.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The `name` of a part from its header block (`Content-Disposition: form-data; name="x"`).
fn part_name(headers: &[u8]) -> Option<&[u8]> {
    for line in headers.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"content-disposition") {
            continue;
        }
        for param in line[colon + 1..].split(|b| *b == b';') {
            let param = param.trim_ascii();
            // parameter names are case-insensitive (RFC 2183); `filename=` is another one
            if param.len() >= 5 && param[..5].eq_ignore_ascii_case(b"name=") {
                let v = &param[5..];
                let v = v.strip_prefix(b"\"").unwrap_or(v);
                let v = v.strip_suffix(b"\"").unwrap_or(v);
                return Some(v);
            }
        }
    }
    None
}

/// Finds a form field in a body that arrives in pieces: each call looks only at bytes it has
/// not looked at before, so reading a large upload up to a late field stays linear.
#[derive(Debug)]
pub struct Scanner {
    delim: Vec<u8>,
    next: Vec<u8>,
    state: State,
    from: usize,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Looking for the first delimiter.
    Delim,
    /// After a delimiter (at `after`): its part's header block.
    Head { after: usize },
    /// The part's value starts after `head_end` + 4; looking for the next delimiter.
    Value { after: usize, head_end: usize },
}

impl Scanner {
    pub fn new(boundary: &[u8]) -> Self {
        let mut delim = b"--".to_vec();
        delim.extend_from_slice(boundary);
        let mut next = b"\r\n".to_vec();
        next.extend_from_slice(&delim);
        Self {
            delim,
            next,
            state: State::Delim,
            from: 0,
        }
    }

    /// Looks for the field `name` in `buf`, the body read so far (always the same buffer,
    /// grown between calls).
    pub fn scan(&mut self, buf: &[u8], name: &str) -> Scan {
        loop {
            match self.state {
                State::Delim => match find(buf, &self.delim, self.from) {
                    None => {
                        self.from = buf.len().saturating_sub(self.delim.len());
                        return Scan::More;
                    }
                    Some(p) => {
                        self.state = State::Head {
                            after: p + self.delim.len(),
                        };
                        self.from = p + self.delim.len();
                    }
                },
                State::Head { after } => {
                    if buf.len() < after + 2 {
                        return Scan::More;
                    }
                    if &buf[after..after + 2] == b"--" {
                        return Scan::Absent;
                    }
                    match find(buf, b"\r\n\r\n", self.from) {
                        None => {
                            self.from = buf.len().saturating_sub(3).max(after);
                            return Scan::More;
                        }
                        Some(head_end) => {
                            self.state = State::Value { after, head_end };
                            self.from = head_end + 4;
                        }
                    }
                }
                State::Value { after, head_end } => match find(buf, &self.next, self.from) {
                    None => {
                        self.from = buf.len().saturating_sub(self.next.len()).max(head_end + 4);
                        return Scan::More;
                    }
                    Some(value_end) => {
                        if part_name(&buf[after..head_end]) == Some(name.as_bytes()) {
                            return Scan::Found(head_end + 4..value_end);
                        }
                        self.state = State::Head {
                            after: value_end + self.next.len(),
                        };
                        self.from = value_end + self.next.len();
                    }
                },
            }
        }
    }
}

/// Looks for the form field `name` in `buf`, the start of a body with `boundary`.
pub fn scan(buf: &[u8], boundary: &[u8], name: &str) -> Scan {
    Scanner::new(boundary).scan(buf, name)
}

/// A part header block longer than this is refused rather than buffered.
const MAX_PART_HEAD: usize = 8192;

/// Watches the bytes after the routed field as they stream past, for a second part with the
/// same name: the gateway routed, priced and allowed by the first, and an upstream that reads
/// the last would run another model.
#[derive(Debug)]
pub struct Watch {
    next: Vec<u8>,
    carry: Vec<u8>,
}

impl Watch {
    pub fn new(boundary: &[u8]) -> Self {
        let mut next = b"\r\n--".to_vec();
        next.extend_from_slice(boundary);
        Self {
            next,
            carry: Vec::new(),
        }
    }

    /// Feeds the next bytes; `false` when a part named `name` (or an unreadable part header)
    /// went past.
    pub fn feed(&mut self, chunk: &[u8], name: &str) -> bool {
        self.carry.extend_from_slice(chunk);
        let w = &self.carry;
        let mut i = 0;
        let mut keep_from = None;
        while let Some(p) = find(w, &self.next, i) {
            let hs = p + self.next.len();
            if w.len() < hs + 2 {
                keep_from = Some(p);
                break;
            }
            if &w[hs..hs + 2] == b"--" {
                i = hs + 2; // the closing delimiter
                continue;
            }
            match find(w, b"\r\n\r\n", hs) {
                Some(he) => {
                    if part_name(&w[hs..he]) == Some(name.as_bytes()) {
                        return false;
                    }
                    i = he + 4;
                }
                None if w.len() - hs > MAX_PART_HEAD => return false,
                None => {
                    keep_from = Some(p);
                    break;
                }
            }
        }
        let keep = keep_from.unwrap_or_else(|| w.len().saturating_sub(self.next.len()).max(i));
        self.carry.drain(..keep.min(self.carry.len()));
        true
    }
}

/// `buf` with the bytes at `range` replaced by `value`.
pub fn replace(buf: &[u8], range: Range<usize>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len() + value.len());
    out.extend_from_slice(&buf[..range.start]);
    out.extend_from_slice(value);
    out.extend_from_slice(&buf[range.end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: &[u8] = b"XyZ";

    fn body(model_first: bool) -> Vec<u8> {
        let model =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nmock/whisper-1\r\n"
                .to_vec();
        let file = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\x00\x01--Xy\r\n--X\r\n".to_vec();
        let mut out = if model_first {
            [model, file].concat()
        } else {
            [file, model].concat()
        };
        out.extend_from_slice(b"--XyZ--\r\n");
        out
    }

    #[test]
    fn boundary_from_the_content_type() {
        assert_eq!(
            boundary(b"multipart/form-data; boundary=\"abc 1\"").as_deref(),
            Some(&b"abc 1"[..])
        );
        assert_eq!(
            boundary(b"Multipart/Form-Data;charset=utf-8; BOUNDARY=x").as_deref(),
            Some(&b"x"[..])
        );
        assert_eq!(boundary(b"application/json"), None);
        assert_eq!(boundary(b"multipart/form-data"), None);
    }

    #[test]
    fn finds_the_model_before_or_after_the_file_and_rewrites_only_it() {
        for first in [true, false] {
            let b = body(first);
            let Scan::Found(r) = scan(&b, B, "model") else {
                panic!("model not found (first: {first})");
            };
            assert_eq!(&b[r.clone()], b"mock/whisper-1");
            let out = replace(&b, r, b"whisper-1");
            assert_eq!(out.len(), b.len() - 5);
            let text = String::from_utf8_lossy(&out);
            assert!(text.contains("\r\n\r\nwhisper-1\r\n--XyZ"), "{text}");
            assert!(
                text.contains("RIFF\u{0}\u{1}--Xy\r\n--X\r\n"),
                "file bytes kept"
            );
        }
    }

    #[test]
    fn a_partial_body_asks_for_more_and_a_closed_one_without_the_field_is_absent() {
        let b = body(true);
        let model_end = 60;
        assert_eq!(scan(&b[..model_end], B, "model"), Scan::More);
        assert_eq!(scan(&b, B, "language"), Scan::Absent);
        assert_eq!(scan(b"", B, "model"), Scan::More);
    }

    #[test]
    fn the_scanner_fed_piece_by_piece_finds_what_a_whole_scan_finds() {
        for first in [true, false] {
            let b = body(first);
            let mut sc = Scanner::new(B);
            let mut got = None;
            for end in 1..=b.len() {
                if let Scan::Found(r) = sc.scan(&b[..end], "model") {
                    got = Some(r);
                    break;
                }
            }
            assert_eq!(
                got,
                Some(match scan(&b, B, "model") {
                    Scan::Found(r) => r,
                    other => panic!("{other:?}"),
                })
            );
        }
    }

    #[test]
    fn a_second_model_part_after_the_routed_one_is_caught_in_any_split() {
        let b = body(false); // file, then model: the model part is a "second" one after the file
        for cut in 0..b.len() {
            let mut w = Watch::new(B);
            let ok = w.feed(&b[..cut], "model") && w.feed(&b[cut..], "model");
            assert!(!ok, "missed at cut {cut}");
        }
        let mut w = Watch::new(B);
        assert!(
            w.feed(&body(true)[80..], "model"),
            "only the file and the end follow"
        );
        let upper =
            b"x\r\n--XyZ\r\nContent-Disposition: form-data; NAME=\"model\"\r\n\r\ngpt-4o\r\n";
        assert!(
            !Watch::new(B).feed(upper, "model"),
            "parameter names ignore case"
        );
    }

    proptest! {
        #[test]
        fn any_prefix_either_asks_for_more_or_finds_the_same_value(cut in 0usize..200) {
            let b = body(true);
            let cut = cut.min(b.len());
            match scan(&b[..cut], B, "model") {
                Scan::More => {}
                Scan::Found(r) => prop_assert_eq!(&b[r], b"mock/whisper-1"),
                Scan::Absent => prop_assert!(false, "absent in a prefix"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = scan(&data, B, "model");
        }
    }
}
