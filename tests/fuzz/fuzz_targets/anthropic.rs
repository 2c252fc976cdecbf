//! Any bytes, split anywhere, through the stream translators (chat chunks → Messages events,
//! Messages events → chat chunks) and the native Messages rewriter: no panic, and the split
//! never matters; any JSON object through both request translations: a translation or a 400.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmedge::anthropic::chat_stream::ChatStream;
use llmedge::anthropic::messages_stream::MessagesStream;
use llmedge::anthropic::to_chat::{to_chat, Asked};
use llmedge::anthropic::to_messages::to_messages;
use llmedge::endpoint::StreamKind;
use llmedge::sse::StreamRewriter;

fn run(make: &dyn Fn() -> StreamRewriter, parts: &[&[u8]]) -> Vec<u8> {
    let mut rw = make();
    let mut out = Vec::new();
    for p in parts {
        rw.feed(p, &mut out);
    }
    rw.finish(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else { return };
    let cut = usize::from(cut).min(body.len());
    let makers: [&dyn Fn() -> StreamRewriter; 3] = [
        &|| StreamRewriter::translating(Box::new(ChatStream::new("m", "msg_f", Asked::default()))),
        &|| StreamRewriter::translating(Box::new(MessagesStream::new("m", "c", 0, true))),
        &|| StreamRewriter::for_kind(StreamKind::MessagesEvents, "m", false),
    ];
    for make in makers {
        assert_eq!(run(make, &[body]), run(make, &[&body[..cut], &body[cut..]]));
    }
    if let Ok(req) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
        if let Err(e) = to_chat(&req, "m") {
            assert_eq!(e.status(), 400);
        }
        if let Err(e) = to_messages(&req, "m", 16) {
            assert_eq!(e.status(), 400);
        }
    }
});
