use super::*;
use crate::config::secret::digest;
use crate::control::{KeySpec, SecretRecord, TenantRecord, TenantSpec};

fn file() -> Config {
    Config::from_yaml(
        "pools: {ollama: {backends: ['http://h:1']}}\nroutes: [{prefix: '', pool: ollama}]\nkeys: [{key: sk-file, tenant: acme}]\ntenants: {acme: {limits: {rpm: 10}}}",
        &|_| None,
    )
    .unwrap()
}

fn key(id: &str, secret: &str, tenant: &str) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        tenant: tenant.into(),
        name: id.into(),
        user: "u".into(),
        hint: "h".into(),
        spec: KeySpec {
            models: Some(vec!["ollama/*".into()]),
            pools: Some(vec!["ollama".into(), "gone".into()]),
            limits: Some(serde_json::json!({"rpm": 60})),
            budget: Some(serde_json::json!({"usd_per_day": 5.0})),
        },
        expires_at: Some(9_999),
        created_at: 1,
        updated_at: 1,
        revoked_at: None,
        secrets: vec![SecretRecord {
            digest: hex::encode(digest(secret.as_bytes())),
            until: None,
        }],
    }
}

#[test]
fn store_keys_and_tenants_join_the_file_ones() {
    let mut k = key("key_1", "sk-store", "beta");
    k.secrets.push(SecretRecord {
        digest: hex::encode(digest(b"sk-old")),
        until: Some(5_000),
    });
    let mut revoked = key("key_2", "sk-revoked", "beta");
    revoked.revoked_at = Some(3);
    let records = Records {
        revision: 3,
        keys: vec![k, revoked],
        tenants: vec![TenantRecord {
            name: "beta".into(),
            spec: TenantSpec {
                limits: Some(serde_json::json!({"tpm": 100})),
                budget: None,
            },
            created_at: 1,
            updated_at: 1,
        }],
    };
    let (c, skipped) = effective(&file(), &records);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(c.keys.len(), 2, "the revoked key is left out");
    let e = &c.keys[1];
    assert_eq!(&*e.principal.key_id, "key_1");
    assert_eq!(e.principal.key_index, 1);
    assert_eq!(e.pools, Some(vec![0]), "a pool the file lost is dropped");
    assert_eq!(e.limits.rpm, Some(60));
    assert_eq!(e.budget.usd_per_day, Some(5.0));
    assert_eq!(e.expires_ms, Some(9_999));
    assert_eq!(e.retiring, vec![(digest(b"sk-old"), 5_000)]);
    assert_eq!(c.tenants.len(), 2);
    assert_eq!(c.tenants[1].limits.tpm, Some(100));
}

#[test]
fn a_clash_with_the_file_is_refused_by_id_and_file_tenants_win() {
    let records = Records {
        revision: 1,
        keys: vec![key("key_9", "sk-file", "acme")],
        tenants: vec![TenantRecord {
            name: "acme".into(),
            spec: TenantSpec::default(),
            created_at: 1,
            updated_at: 1,
        }],
    };
    let (c, skipped) = effective(&file(), &records);
    assert_eq!(c.keys.len(), 1);
    assert_eq!(c.tenants[0].limits.rpm, Some(10));
    let clash = skipped.iter().find(|s| s.clash).unwrap();
    assert_eq!(clash.id, "key_9");
    assert!(clash.reason.contains("key_9"));
    assert!(skipped.iter().any(|s| s.id == "tenant:acme" && !s.clash));
}
