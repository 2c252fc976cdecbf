//! The command line: `--test` on every shipped config, exit 64 with the bad field named.

use std::process::Command;

use crate::support::bin;

fn check(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("--config")
        .arg(path)
        .arg("--test")
        .env("OPENAI_API_KEY", "sk-test")
        .env("ACME_ALICE_KEY", "sk-test-alice")
        .env("TEAM_KEY", "sk-test-team")
        .env("LLMEDGE_REDIS_URL", "redis://:sk-redis-pw@127.0.0.1:6379/0")
        .env(
            "LLMEDGE_DATABASE_URL",
            "postgres://llmedge:pw@127.0.0.1:5432/llmedge",
        )
        .env("LLMEDGE_ADMIN_KEY", "adm-test")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn every_file_in_conf_passes_test() {
    let mut seen = 0;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let (code, out, err) = check(&p);
                assert_eq!((code, out.trim()), (0, "ok"), "{}: {err}", p.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 2, "conf/ must ship configs");
}

#[test]
fn bad_config_prints_one_line_naming_the_field_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    std::fs::write(
        &p,
        "pools: {openai: {backends: ['https://api.openai.com']}}\nroutes:\n  - {prefix: 'a', pool: openai}\n  - {prefix: 'gpt-', pool: opena}\n",
    )
    .unwrap();
    let (code, _, err) = check(&p);
    assert_eq!(code, 64);
    assert_eq!(
        err.trim(),
        "error: routes[1].pool: unknown pool \"opena\" (known: openai)"
    );

    std::fs::write(
        &p,
        "server: {listen: '127.0.0.1:1', threads: 2, tls_mode: true}\n",
    )
    .unwrap();
    let (code, _, err) = check(&p);
    assert_eq!(code, 64);
    assert!(
        err.trim()
            .starts_with("error: server.tls_mode: unknown field `tls_mode`"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1);

    for (state, want) in [
        (
            "{backend: redis, redis: {url: 'http://:hunter2@h:6379'}}",
            "error: state.redis.url: must start with redis:// or rediss://",
        ),
        (
            "{backend: redis, redis: {url: 'env:LLMEDGE_REDIS_URL', timeout_ms: 0}}",
            "error: state.redis.timeout_ms: 0 must be between 1 and 10000",
        ),
    ] {
        std::fs::write(
            &p,
            format!("pools: {{p: {{backends: ['http://h']}}}}\nroutes: [{{prefix: '', pool: p}}]\nstate: {state}\n"),
        )
        .unwrap();
        let (code, _, err) = check(&p);
        assert_eq!((code, err.trim()), (64, want));
    }

    let (code, _, err) = check(&dir.path().join("missing.yaml"));
    assert_eq!(code, 64);
    assert!(err.contains("cannot read config"), "{err}");
}

#[test]
fn the_default_state_file_is_not_committed_by_accident() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".gitignore");
    let ignore = std::fs::read_to_string(path).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == "llmedge-state.json*")
            && ignore.lines().any(|l| l.trim() == "llmedge.db*"),
        "the state file (and its lock and temporary files) must be ignored"
    );
}
