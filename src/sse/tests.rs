use super::*;
use crate::endpoint::StreamKind;
use proptest::prelude::*;

const STREAM: &str = concat!(
    ": ping\n\n",
    "data: {\"id\":\"c\",\"model\":\"llama3\",\"choices\":[{\"delta\":{\"content\":\"h\u{e9}\u{1f600}\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"model\":\"llama3\",\"choices\":[{\"delta\":{\"content\":\"!\"}}],\"usage\":null}\r\n\r\n",
    "event: note\rdata: plain text\r\r",
    "data: {\"id\":\"c\",\"model\":\"llama3\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
    "data: [DONE]\n\n",
);

fn run(chunks: &[&[u8]], strip: bool) -> (String, StreamRewriter) {
    run_kind(StreamKind::Chunks, chunks, strip)
}

fn run_kind(kind: StreamKind, chunks: &[&[u8]], strip: bool) -> (String, StreamRewriter) {
    let mut rw = StreamRewriter::for_kind(kind, "ollama/llama3", strip);
    let mut out = Vec::new();
    for c in chunks {
        rw.feed(c, &mut out);
    }
    rw.finish(&mut out);
    (String::from_utf8(out).unwrap(), rw)
}

#[test]
fn whole_stream_is_rewritten_and_usage_chunk_stripped() {
    let (out, rw) = run(&[STREAM.as_bytes()], true);
    assert_eq!(
        out,
        concat!(
            ": ping\n\n",
            "data: {\"id\":\"c\",\"model\":\"ollama/llama3\",\"choices\":[{\"delta\":{\"content\":\"h\u{e9}\u{1f600}\"}}]}\n\n",
            "data: {\"id\":\"c\",\"model\":\"ollama/llama3\",\"choices\":[{\"delta\":{\"content\":\"!\"}}]}\r\n\r\n",
            "event: note\rdata: plain text\r\r",
            "data: [DONE]\n\n",
        )
    );
    assert_eq!(rw.usage().unwrap().total_tokens, 5);
    assert!(rw.is_done());
}

#[test]
fn client_that_asked_for_usage_keeps_it() {
    let (out, rw) = run(&[STREAM.as_bytes()], false);
    assert!(out.contains("\"usage\":{\"prompt_tokens\":3"), "{out}");
    assert!(
        out.contains("\"usage\":null"),
        "untouched when not injected"
    );
    assert_eq!(rw.usage().unwrap().prompt_tokens, 3);
}

#[test]
fn events_go_out_as_soon_as_their_blank_line_arrives() {
    let mut rw = StreamRewriter::new("m", false);
    let mut out = Vec::new();
    let r = rw.feed(b"data: {\"model\":\"x\",\"choices\":[{}]}\n", &mut out);
    assert!(out.is_empty(), "incomplete event must wait");
    assert!(!r.first_choice);
    let r = rw.feed(b"\ndata: {\"mo", &mut out);
    assert_eq!(out, b"data: {\"model\":\"m\",\"choices\":[{}]}\n\n");
    assert!(r.first_choice, "first choice is reported once");
    let r = rw.feed(b"del\":\"x\",\"choices\":[{}]}\n\n", &mut out);
    assert!(!r.first_choice);
}

#[test]
fn carriage_return_at_a_read_boundary_waits_for_the_next_byte() {
    let (a, _) = run(&[b"data: {\"model\":\"x\"}\r", b"\n\r\n"], false);
    let (b, _) = run(&[b"data: {\"model\":\"x\"}\r\n\r\n"], false);
    assert_eq!(a, b);
    assert_eq!(a, "data: {\"model\":\"ollama/llama3\"}\r\n\r\n");
}

#[test]
fn multi_line_data_is_joined_and_rewritten() {
    let (out, _) = run(&[b"id: 1\ndata: {\"model\":\ndata: \"x\"}\n\n"], false);
    assert_eq!(out, "id: 1\ndata: {\"model\":\"ollama/llama3\"}\n\n");
}

#[test]
fn unterminated_tail_is_flushed_verbatim_at_the_end() {
    let (out, _) = run(
        &[b"data: {\"model\":\"x\"}\n\ndata: {\"model\":\"x\"}"],
        false,
    );
    assert_eq!(
        out,
        "data: {\"model\":\"ollama/llama3\"}\n\ndata: {\"model\":\"x\"}"
    );
}

#[test]
fn oversize_event_is_forwarded_not_buffered_forever() {
    let mut rw = StreamRewriter::new("m", false);
    let mut out = Vec::new();
    let big = vec![b'a'; MAX_EVENT_BYTES + 1];
    rw.feed(b"data: ", &mut out);
    rw.feed(&big, &mut out);
    assert_eq!(out.len(), MAX_EVENT_BYTES + 7);
    assert_eq!(rw.oversize_flushes(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn any_chunking_of_the_same_bytes_gives_the_same_output(
        cuts in proptest::collection::vec(0usize..STREAM.len(), 0..40),
        strip in any::<bool>(),
    ) {
        let bytes = STREAM.as_bytes();
        let mut cuts = cuts;
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for c in cuts {
            chunks.push(&bytes[last..c]);
            last = c;
        }
        chunks.push(&bytes[last..]);
        let (whole, w) = run(&[bytes], strip);
        let (split, s) = run(&chunks, strip);
        prop_assert_eq!(whole, split);
        prop_assert_eq!(w.usage(), s.usage());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_are_conserved_without_json(data in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
        let clean: Vec<u8> = data.iter().map(|b| if *b == b'{' { b'(' } else { *b }).collect();
        let cut = cut.min(clean.len());
        let (out, _) = {
            let mut rw = StreamRewriter::new("m", true);
            let mut out = Vec::new();
            rw.feed(&clean[..cut], &mut out);
            rw.feed(&clean[cut..], &mut out);
            rw.finish(&mut out);
            (out, rw)
        };
        prop_assert_eq!(out, clean, "non-JSON bytes must pass through unchanged");
    }
}

const RESPONSES: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"model\":\"llama3\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
    "event: response.output_text.delta\n",
    "data: {\"type\":\"response.output_text.delta\",\"delta\":\"h\u{e9}\"}\n\n",
    ": keep-alive\n\n",
    "event: response.completed\r\n",
    "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"model\":\"llama3\",\"usage\":{\"input_tokens\":4,\"output_tokens\":1,\"total_tokens\":5,\"input_tokens_details\":{\"cached_tokens\":2}}}}\r\n\r\n",
);

fn run_responses(chunks: &[&[u8]]) -> (String, StreamRewriter) {
    run_kind(StreamKind::ResponsesEvents, chunks, false)
}

#[test]
fn responses_events_get_their_model_restored_and_usage_read() {
    let (out, rw) = run_responses(&[RESPONSES.as_bytes()]);
    let want = RESPONSES.replace("\"model\":\"llama3\"", "\"model\":\"ollama/llama3\"");
    assert_eq!(out, want);
    let u = rw.usage().unwrap();
    assert_eq!((u.prompt_tokens, u.completion_tokens), (4, 1));
    assert_eq!(u.prompt_tokens_details.unwrap().cached_tokens, Some(2));
    assert!(rw.is_done(), "response.completed ends the stream");
    assert_eq!(rw.choice_events(), 1, "one output delta");
}

#[test]
fn a_responses_stream_without_its_terminal_event_is_not_done() {
    let cut = &RESPONSES[..RESPONSES.find(": keep-alive").unwrap()];
    let (_, rw) = run_responses(&[cut.as_bytes()]);
    assert!(!rw.is_done());
    assert!(rw.usage().is_none());
}

proptest! {
    #[test]
    fn any_chunking_of_a_responses_stream_gives_the_same_output(cuts in proptest::collection::vec(0usize..600, 0..12)) {
        let bytes = RESPONSES.as_bytes();
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&bytes[last..p]);
            last = p;
        }
        chunks.push(&bytes[last..]);
        let (whole, _) = run_responses(&[bytes]);
        let (split, rw) = run_responses(&chunks);
        prop_assert_eq!(whole, split);
        prop_assert!(rw.is_done());
    }
}

#[test]
fn a_responses_event_over_several_data_lines_is_still_rewritten() {
    let ev = "event: response.completed\ndata: {\"type\":\"response.completed\",\ndata: \"response\":{\"model\":\"llama3\",\"usage\":{\"input_tokens\":1,\"output_tokens\":2}}}\n\n";
    let (out, rw) = run_responses(&[ev.as_bytes()]);
    assert!(out.contains("\"model\":\"ollama/llama3\""), "{out}");
    assert!(rw.is_done());
    assert_eq!(rw.usage().unwrap().completion_tokens, 2);
}
