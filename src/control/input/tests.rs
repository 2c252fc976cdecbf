use super::*;

fn cat() -> Catalog<'static> {
    Catalog {
        pools: vec!["ollama", "openai"],
        now_ms: 2_000_000_000_000,
    }
}

fn err(body: &str) -> InputError {
    new_key(body.as_bytes(), &cat()).unwrap_err()
}

#[test]
fn a_full_key_parses_and_keeps_its_spec() {
    let k = new_key(
        br#"{"name":"ci","tenant":"acme","user":"alice","models":["ollama/*"],"pools":["ollama"],
            "limits":{"rpm":60,"models":{"ollama/*":{"tpm":1000}}},"budget":{"usd_per_day":5},
            "expires_at":"2999-01-01T00:00:00Z"}"#,
        &cat(),
    )
    .unwrap();
    assert_eq!(
        (k.name.as_str(), k.tenant.as_str(), k.user.as_str()),
        ("ci", "acme", "alice")
    );
    assert_eq!(k.spec.limits.unwrap()["rpm"], 60);
    assert!(k.expires_at.unwrap() > 2_000_000_000_000);
    assert!(k.secret.is_none());
}

#[test]
fn every_bad_field_is_named() {
    let cases = [
        (r#"{"name":"a","tenant":"t","colour":"red"}"#, "colour"),
        (r#"{"tenant":"t"}"#, "name"),
        (
            r#"{"name":"a","tenant":"t","limits":{"rpm":-5}}"#,
            "limits.rpm",
        ),
        (
            r#"{"name":"a","tenant":"t","limits":{"rpm":"many"}}"#,
            "limits.rpm",
        ),
        (
            r#"{"name":"a","tenant":"t","limits":{"rpm":0}}"#,
            "limits.rpm",
        ),
        (
            r#"{"name":"a","tenant":"t","limits":{"burst":3}}"#,
            "limits",
        ),
        (
            r#"{"name":"a","tenant":"t","budget":{"usd_per_day":-1}}"#,
            "budget.usd_per_day",
        ),
        (r#"{"name":"a","tenant":"t","pools":["nope"]}"#, "pools[0]"),
        (
            r#"{"name":"a","tenant":"t","models":["ok/*","has space"]}"#,
            "models[1]",
        ),
        (r#"{"name":"a","tenant":"t","models":[""]}"#, "models[0]"),
        (
            r#"{"name":"a","tenant":"t","expires_at":"2000-01-01T00:00:00Z"}"#,
            "expires_at",
        ),
        (
            r#"{"name":"a","tenant":"t","expires_at":"tomorrow"}"#,
            "expires_at",
        ),
        (r#"{"name":"","tenant":"t"}"#, "name"),
        (r#"{"name":"a","tenant":"t","key":"short"}"#, "key"),
        (r#"not json"#, "body"),
    ];
    for (body, param) in cases {
        let e = err(body);
        assert!(
            e.param == param || e.param.starts_with(param),
            "{body}: got param {} ({})",
            e.param,
            e.msg
        );
    }
}

#[test]
fn a_patch_tells_absent_from_null() {
    let p = key_patch(br#"{"limits":{"rpm":5},"models":null}"#, &cat()).unwrap();
    assert_eq!(p.limits, Some(Some(serde_json::json!({"rpm":5}))));
    assert_eq!(p.models, Some(None));
    assert_eq!(p.pools, None);
    assert_eq!(p.name, None);
    let rec = KeyRecord {
        id: "key_1".into(),
        tenant: "t".into(),
        name: "n".into(),
        user: String::new(),
        hint: "h".into(),
        spec: KeySpec {
            models: Some(vec!["x".into()]),
            pools: Some(vec!["ollama".into()]),
            limits: None,
            budget: None,
        },
        expires_at: None,
        created_at: 0,
        updated_at: 0,
        revoked_at: None,
        secrets: vec![],
    };
    let after = p.apply(&rec);
    assert_eq!(after.spec.models, None);
    assert_eq!(after.spec.pools, Some(vec!["ollama".to_string()]));
    assert_eq!(after.spec.limits.unwrap()["rpm"], 5);
    let mut with_tpm = rec.clone();
    with_tpm.spec.limits = Some(serde_json::json!({"tpm": 100, "rpm": 1}));
    let p = key_patch(br#"{"limits":{"rpm":null,"concurrency":2}}"#, &cat()).unwrap();
    assert_eq!(
        p.apply(&with_tpm).spec.limits,
        Some(serde_json::json!({"tpm": 100, "concurrency": 2})),
        "PATCH merges limits (RFC 7386)"
    );
    let e = key_patch(br#"{"tenant":"other"}"#, &cat()).unwrap_err();
    assert_eq!(e.param, "tenant", "a key cannot move to another tenant");
}

#[test]
fn rotation_grace_and_tenant_bodies() {
    assert_eq!(rotate(b"").unwrap(), 0);
    assert_eq!(rotate(br#"{"grace_secs":3600}"#).unwrap(), 3_600_000);
    assert_eq!(
        rotate(br#"{"grace_secs":99999999}"#).unwrap_err().param,
        "grace_secs"
    );
    assert_eq!(rotate(br#"{"grace":1}"#).unwrap_err().param, "grace");
    let t = tenant(br#"{"limits":{"rpm":600},"budget":{"usd_per_month":1000}}"#).unwrap();
    let spec = t.apply(None, true);
    assert_eq!(spec.limits.unwrap()["rpm"], 600);
    let old = TenantSpec {
        limits: Some(serde_json::json!({"rpm": 1})),
        budget: Some(serde_json::json!({"usd_per_day": 2.0})),
    };
    let patch = tenant(br#"{"limits":{"rpm":9}}"#).unwrap();
    let merged = patch.apply(Some(&old), false);
    assert_eq!(
        merged.budget, old.budget,
        "PATCH keeps what it does not name"
    );
    assert_eq!(merged.limits, Some(serde_json::json!({"rpm": 9})));
    let replaced = patch.apply(Some(&old), true);
    assert_eq!(replaced.budget, None, "PUT replaces the whole spec");
    let add = tenant(br#"{"limits":{"tpm":7},"budget":{"usd_per_day":null}}"#).unwrap();
    let both = add.apply(Some(&old), false);
    assert_eq!(
        both.limits,
        Some(serde_json::json!({"rpm": 1, "tpm": 7})),
        "limits merge"
    );
    assert_eq!(both.budget, None, "a null removes; an empty rule is none");
    assert_eq!(
        tenant(br#"{"limits":{"tpm":-1}}"#).unwrap_err().param,
        "limits.tpm"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn field() -> impl Strategy<Value = (String, serde_json::Value)> {
        let name = prop::sample::select(vec![
            "name",
            "tenant",
            "user",
            "models",
            "pools",
            "limits",
            "budget",
            "expires_at",
            "key",
            "extra",
        ]);
        let value = prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-z/*]{0,12}".prop_map(serde_json::Value::from),
            Just(serde_json::json!({"rpm": 5})),
            Just(serde_json::json!({"rpm": -5})),
            Just(serde_json::json!(["ollama/*", ""])),
            Just(serde_json::Value::Null),
        ];
        (name.prop_map(str::to_string), value)
    }

    proptest! {
        /// Any body is either a key or a refusal that names a field; nothing panics.
        #[test]
        fn any_body_parses_or_names_a_field(fields in prop::collection::vec(field(), 0..8)) {
            let body = serde_json::Value::Object(fields.into_iter().collect());
            let bytes = body.to_string();
            match new_key(bytes.as_bytes(), &cat()) {
                Ok(k) => {
                    prop_assert!(!k.name.trim().is_empty() && !k.tenant.trim().is_empty());
                }
                Err(e) => prop_assert!(!e.param.is_empty(), "{}", e.msg),
            }
            let _ = key_patch(bytes.as_bytes(), &cat());
            let _ = tenant(bytes.as_bytes());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = new_key(&bytes, &cat());
            let _ = key_patch(&bytes, &cat());
            let _ = rotate(&bytes);
            let _ = tenant(&bytes);
        }
    }
}
