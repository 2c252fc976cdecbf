//! Any text as a config: an error or a config, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = llmedge::config::Config::from_yaml(text, &|_| Some("x".to_string()));
});
