//! Any bytes as a request body: an OpenAI error or a rewrite that is still the same JSON object.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmedge::openai::{inspect_request, rewrite_request};

fuzz_target!(|data: &[u8]| {
    let Ok((obj, head)) = inspect_request(data) else { return };
    if let Some(out) = rewrite_request(&obj, &head, "up") {
        let v: serde_json::Value = serde_json::from_slice(&out).expect("rewrite yields JSON");
        assert_eq!(v["model"], "up");
    }
});
