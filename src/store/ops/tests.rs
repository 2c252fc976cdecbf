use super::*;
use crate::control::input::{self, Catalog};
use crate::store::schema::{self, SchemaError};
use crate::store::sqlite::Sqlite;

fn db() -> Sqlite {
    let mut s = Sqlite::open(":memory:").unwrap();
    schema::migrate(&mut s).unwrap();
    s
}

fn cat() -> Catalog<'static> {
    Catalog {
        pools: vec!["p"],
        now_ms: 1_000,
    }
}

fn create(sql: &mut Sqlite, id: &str, name: &str, secret: &str) -> Result<Applied, OpError> {
    let body = format!(r#"{{"name":"{name}","tenant":"acme","limits":{{"rpm":5}}}}"#);
    let key = input::new_key(body.as_bytes(), &cat()).unwrap();
    let s = crate::control::secret::from_secret(secret.into());
    let w = Write::CreateKey {
        key,
        id: id.into(),
        digest: s.digest,
        hint: s.hint,
        make_tenant: true,
    };
    apply(sql, 1_000, "admin:t", w).map(|(a, _)| a)
}

fn patch(sql: &mut Sqlite, at: u64, body: &str) {
    let patch = input::key_patch(body.as_bytes(), &cat()).unwrap();
    let id = "key_a".to_string();
    apply(sql, at, "admin:t", Write::PatchKey { id, patch }).unwrap();
}

fn rotate(sql: &mut Sqlite, at: u64, secret: &str, grace_ms: u64) -> String {
    let s = crate::control::secret::from_secret(secret.into());
    let w = Write::RotateKey {
        id: "key_a".into(),
        grace_ms,
        digest: s.digest.clone(),
        hint: s.hint,
    };
    apply(sql, at, "admin:t", w).unwrap();
    s.digest
}

fn revoke(sql: &mut Sqlite, at: u64) -> Result<Applied, OpError> {
    apply(sql, at, "admin:t", Write::RevokeKey { id: "key_a".into() }).map(|(a, _)| a)
}

#[test]
fn create_patch_and_rotate_with_grace_keep_both_secrets_for_a_while() {
    let mut sql = db();
    create(&mut sql, "key_a", "ci", "sk-aaaaaaaaaaaaaaaa").unwrap();
    let r = load(&mut sql).unwrap();
    assert_eq!(r.revision, 1);
    assert_eq!(r.keys[0].secrets.len(), 1);
    assert_eq!(r.tenants[0].name, "acme", "the tenant was made");
    patch(&mut sql, 2_000, r#"{"limits":{"rpm":50}}"#);
    let digest = rotate(&mut sql, 3_000, "sk-bbbbbbbbbbbbbbbb", 60_000);
    let r = load(&mut sql).unwrap();
    let k = &r.keys[0];
    assert_eq!(r.revision, 3);
    assert_eq!(k.spec.limits.as_ref().unwrap()["rpm"], 50);
    assert_eq!(k.secrets.len(), 2);
    assert!(k.secrets.iter().any(|x| x.until == Some(63_000)));
    assert!(k
        .secrets
        .iter()
        .any(|x| x.digest == digest && x.until.is_none()));
}

#[test]
fn a_revoke_drops_every_secret_and_the_audit_tells_the_story_without_secrets() {
    let mut sql = db();
    create(&mut sql, "key_a", "ci", "sk-aaaaaaaaaaaaaaaa").unwrap();
    patch(&mut sql, 2_000, r#"{"limits":{"rpm":50}}"#);
    rotate(&mut sql, 3_000, "sk-bbbbbbbbbbbbbbbb", 0);
    assert_eq!(load(&mut sql).unwrap().keys[0].secrets.len(), 1, "grace 0");
    revoke(&mut sql, 4_000).unwrap();
    let r = load(&mut sql).unwrap();
    assert_eq!(r.revision, 4);
    assert_eq!(r.keys[0].revoked_at, Some(4_000));
    assert!(r.keys[0].secrets.is_empty());
    let rows = audit(&mut sql, None, 10).unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["key.revoke", "key.rotate", "key.patch", "key.create"]
    );
    assert_eq!(rows[2]["before"]["limits"]["rpm"], 5);
    assert_eq!(rows[2]["after"]["limits"]["rpm"], 50);
    assert_eq!(audit(&mut sql, Some(3), 10).unwrap().len(), 2);
    let all = serde_json::to_string(&rows).unwrap();
    assert!(!all.contains("sk-aaaa") && !all.contains("sk-bbbb"));
    assert_eq!(
        revoke(&mut sql, 5_000).unwrap_err(),
        OpError::NotFound("key key_a is revoked".into())
    );
}

#[test]
fn names_are_unique_per_tenant_among_live_keys_and_secrets_are_unique() {
    let mut sql = db();
    create(&mut sql, "key_a", "ci", "sk-aaaaaaaaaaaaaaaa").unwrap();
    assert!(matches!(
        create(&mut sql, "key_b", "ci", "sk-cccccccccccccccc"),
        Err(OpError::Conflict(_))
    ));
    assert!(matches!(
        create(&mut sql, "key_c", "other", "sk-aaaaaaaaaaaaaaaa"),
        Err(OpError::Conflict(m)) if m.contains("secret")
    ));
    assert_eq!(
        load(&mut sql).unwrap().revision,
        1,
        "refused writes leave nothing"
    );
    apply(
        &mut sql,
        2_000,
        "a",
        Write::RevokeKey { id: "key_a".into() },
    )
    .unwrap();
    create(&mut sql, "key_d", "ci", "sk-dddddddddddddddd").unwrap();
}

#[test]
fn tenants_put_patch_and_delete_only_without_live_keys() {
    let mut sql = db();
    let put = |sql: &mut Sqlite, body: &str, replace: bool| {
        let w = Write::PutTenant {
            name: "beta".into(),
            patch: input::tenant(body.as_bytes()).unwrap(),
            replace,
        };
        apply(sql, 1_000, "a", w).map(|(a, _)| a)
    };
    assert!(matches!(
        put(&mut sql, r#"{"limits":{"rpm":1}}"#, false),
        Err(OpError::NotFound(_))
    ));
    put(
        &mut sql,
        r#"{"limits":{"rpm":1},"budget":{"usd_per_day":2}}"#,
        true,
    )
    .unwrap();
    put(&mut sql, r#"{"limits":{"rpm":7}}"#, false).unwrap();
    let t = load(&mut sql).unwrap().tenants.remove(0);
    assert_eq!(t.spec.limits.unwrap()["rpm"], 7);
    assert_eq!(t.spec.budget.unwrap()["usd_per_day"], 2);
    create(&mut sql, "key_a", "ci", "sk-aaaaaaaaaaaaaaaa").unwrap();
    let del = |sql: &mut Sqlite, name: &str| {
        apply(sql, 2_000, "a", Write::DeleteTenant { name: name.into() }).map(|(a, _)| a)
    };
    assert!(matches!(del(&mut sql, "acme"), Err(OpError::Conflict(_))));
    del(&mut sql, "beta").unwrap();
    assert!(matches!(del(&mut sql, "beta"), Err(OpError::NotFound(_))));
}

#[test]
fn a_schema_newer_than_this_binary_is_refused() {
    let mut sql = db();
    assert_eq!(
        schema::migrate(&mut sql).unwrap(),
        schema::known_version(),
        "migrating twice is a no-op"
    );
    sql.exec(
        "INSERT INTO llmedge_schema (version, name, applied_at) VALUES (99, 'future', 0)",
        &[],
    )
    .unwrap();
    assert_eq!(
        schema::migrate(&mut sql).unwrap_err(),
        SchemaError::TooNew {
            found: 99,
            known: 2
        }
    );
}

#[test]
fn an_unreadable_row_is_left_out_and_the_rest_still_loads() {
    let mut sql = db();
    create(&mut sql, "key_a", "ci", "sk-aaaaaaaaaaaaaaaa").unwrap();
    create(&mut sql, "key_b", "cd", "sk-bbbbbbbbbbbbbbbb").unwrap();
    sql.exec(
        "UPDATE llmedge_keys SET spec = $1 WHERE id = 'key_a'",
        &[r#"{"models":["x"],"added_by_a_newer_llmedge":1}"#.into()],
    )
    .unwrap();
    sql.exec(
        "UPDATE llmedge_keys SET spec = 'not json' WHERE id = 'key_b'",
        &[],
    )
    .unwrap();
    let r = load(&mut sql).unwrap();
    let ids: Vec<&str> = r.keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(
        ids,
        ["key_a"],
        "a newer field is ignored, a broken row skipped"
    );
    assert_eq!(r.keys[0].spec.models, Some(vec!["x".to_string()]));
}

#[test]
fn a_patch_merges_limits_and_never_touches_a_revoked_key() {
    let mut sql = db();
    create(&mut sql, "key_a", "ci", "sk-aaaaaaaaaaaaaaaa").unwrap();
    patch(&mut sql, 2_000, r#"{"limits":{"tpm":100}}"#);
    let limits = load(&mut sql).unwrap().keys[0].spec.limits.clone();
    assert_eq!(limits, Some(serde_json::json!({"rpm": 5, "tpm": 100})));
    revoke(&mut sql, 3_000).unwrap();
    let p = input::key_patch(br#"{"name":"again"}"#, &cat()).unwrap();
    let w = Write::PatchKey {
        id: "key_a".into(),
        patch: p,
    };
    assert!(matches!(
        apply(&mut sql, 4_000, "a", w),
        Err(OpError::NotFound(_))
    ));
}
