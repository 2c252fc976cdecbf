//! Any bytes, split anywhere, through the SSE rewriter: no panic, and the split never matters.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmedge::sse::StreamRewriter;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else { return };
    let cut = usize::from(cut).min(body.len());
    let run = |parts: &[&[u8]]| {
        let mut rw = StreamRewriter::new("fuzz/model", cut % 2 == 0);
        let mut out = Vec::new();
        for p in parts {
            rw.feed(p, &mut out);
        }
        rw.finish(&mut out);
        (out, rw.usage())
    };
    assert_eq!(run(&[body]), run(&[&body[..cut], &body[cut..]]));
});
