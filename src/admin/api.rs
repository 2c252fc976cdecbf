//! The admin API's routes (`/admin/v1/…`): the table every route is matched against (and the
//! OpenAPI document is checked against), admin-token authentication, and dispatch.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::reply::{ApiError, Reply};
use super::{keys, tenants, usage};
use crate::live::Live;

/// Every route the admin listener answers, as `(method, template)`; `{x}` is one path segment.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/admin/v1/openapi.json"),
    ("POST", "/admin/v1/keys"),
    ("GET", "/admin/v1/keys"),
    ("GET", "/admin/v1/keys/{id}"),
    ("PATCH", "/admin/v1/keys/{id}"),
    ("DELETE", "/admin/v1/keys/{id}"),
    ("POST", "/admin/v1/keys/{id}/rotate"),
    ("GET", "/admin/v1/tenants"),
    ("GET", "/admin/v1/tenants/{name}"),
    ("PUT", "/admin/v1/tenants/{name}"),
    ("PATCH", "/admin/v1/tenants/{name}"),
    ("DELETE", "/admin/v1/tenants/{name}"),
    ("GET", "/admin/v1/audit"),
    ("GET", "/admin/v1/usage"),
    ("GET", "/admin/v1/usage/requests"),
];

/// The OpenAPI 3 document of this API (kept in the repo, served as is).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest admin request body.
pub const MAX_BODY: usize = 1 << 20;

/// One admin request, as read off the listener.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub authorization: Option<&'a [u8]>,
    /// `Accept`: the usage reports answer CSV for `text/csv`.
    pub accept: Option<&'a [u8]>,
    pub body: &'a [u8],
}

/// What a matched route is handed.
pub struct Call<'a> {
    pub live: &'a Arc<Live>,
    /// `admin:<digest prefix>` of the token used: who the audit says made a change.
    pub actor: String,
    pub params: Vec<String>,
    pub query: &'a str,
    pub accept: Option<&'a [u8]>,
    pub body: &'a [u8],
}

impl Call<'_> {
    /// The store writes go through.
    pub fn store(&self) -> Result<&crate::store::Store, ApiError> {
        self.live.store().map(|s| &**s).ok_or_else(|| {
            ApiError::new(
                503,
                "store_unavailable",
                "no control-plane store is attached",
            )
        })
    }
}

/// Which route `method path` is: its index in [`ROUTES`] and the path parameters; or the
/// methods the path answers, when only the method is wrong.
pub fn route(method: &str, path: &str) -> Result<(usize, Vec<String>), Vec<&'static str>> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut allowed = Vec::new();
    for (i, (m, template)) in ROUTES.iter().enumerate() {
        let t: Vec<&str> = template.split('/').collect();
        if t.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        let fits = t.iter().zip(&segs).all(|(t, s)| {
            if t.starts_with('{') {
                params.push(super::reply::decode(s));
                !s.is_empty()
            } else {
                t == s
            }
        });
        if !fits {
            continue;
        }
        if *m == method {
            return Ok((i, params));
        }
        allowed.push(*m);
    }
    Err(allowed)
}

/// The token's digest if it is an admin key of the running config.
fn admin(live: &Live, authorization: Option<&[u8]>) -> Result<String, ApiError> {
    let snap = live.load();
    let keys = &snap.config.admin.keys;
    if keys.is_empty() {
        return Err(ApiError::unauthorized(
            "the admin API is off: no admin keys are configured (admin.keys)",
        ));
    }
    let token = authorization
        .map(<[u8]>::trim_ascii)
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
                .map(|_| &v[7..])
        })
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("send an admin key as `Authorization: Bearer <key>`")
        })?;
    let d = crate::config::secret::digest(token);
    let mut hit = 0u8;
    for k in keys {
        hit |= k.ct_eq(&d).unwrap_u8();
    }
    if hit == 0 {
        return Err(ApiError::unauthorized("incorrect admin key"));
    }
    Ok(format!("admin:{}", hex::encode(&d[..6])))
}

/// Answers an `/admin/v1/…` request.
pub async fn handle(live: &Arc<Live>, req: ApiRequest<'_>) -> Reply {
    match dispatch(live, req).await {
        Ok(r) => r,
        Err(e) => e.reply(),
    }
}

async fn dispatch(live: &Arc<Live>, req: ApiRequest<'_>) -> Result<Reply, ApiError> {
    let (index, params) = match route(req.method, req.path) {
        Ok(r) => r,
        Err(allowed) if allowed.is_empty() => {
            return Err(ApiError::new(
                404,
                "unknown_path",
                format!("unknown request URL: {} {}", req.method, req.path),
            ))
        }
        Err(allowed) => {
            let mut r = ApiError::new(
                405,
                "method_not_allowed",
                format!("method {} is not allowed on {}", req.method, req.path),
            )
            .reply();
            r.header = Some(("allow", allowed.join(", ")));
            return Ok(r);
        }
    };
    let (method, template) = ROUTES.get(index).copied().unwrap_or(("", ""));
    if template == "/admin/v1/openapi.json" {
        return Ok(Reply {
            status: 200,
            content_type: "application/json",
            body: OPENAPI.as_bytes().to_vec(),
            header: None,
        });
    }
    let actor = admin(live, req.authorization)?;
    let call = Call {
        live,
        actor,
        params,
        query: req.query,
        accept: req.accept,
        body: req.body,
    };
    answer(call, method, template).await
}

/// The handler of a matched, authenticated route.
async fn answer(call: Call<'_>, method: &str, template: &str) -> Result<Reply, ApiError> {
    match (method, template) {
        ("POST", "/admin/v1/keys") => keys::create(call).await,
        ("GET", "/admin/v1/keys") => keys::list(&call),
        ("GET", "/admin/v1/keys/{id}") => keys::show(&call),
        ("PATCH", "/admin/v1/keys/{id}") => keys::patch(call).await,
        ("DELETE", "/admin/v1/keys/{id}") => keys::revoke(call).await,
        ("POST", "/admin/v1/keys/{id}/rotate") => keys::rotate(call).await,
        ("GET", "/admin/v1/tenants") => tenants::list(&call),
        ("GET", "/admin/v1/tenants/{name}") => tenants::show(&call),
        ("PUT", "/admin/v1/tenants/{name}") => tenants::put(call, true).await,
        ("PATCH", "/admin/v1/tenants/{name}") => tenants::put(call, false).await,
        ("DELETE", "/admin/v1/tenants/{name}") => tenants::delete(call).await,
        ("GET", "/admin/v1/audit") => tenants::audit(&call).await,
        ("GET", "/admin/v1/usage") => usage::usage(&call).await,
        ("GET", "/admin/v1/usage/requests") => usage::requests(&call).await,
        _ => Err(ApiError::new(
            404,
            "unknown_path",
            format!("unknown request URL: {method} {template}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_templates_and_tell_wrong_methods_apart() {
        let (i, p) = route("POST", "/admin/v1/keys/key_1/rotate").unwrap();
        assert_eq!(ROUTES[i], ("POST", "/admin/v1/keys/{id}/rotate"));
        assert_eq!(p, vec!["key_1".to_string()]);
        assert_eq!(
            route("PUT", "/admin/v1/keys/x").unwrap_err(),
            vec!["GET", "PATCH", "DELETE"]
        );
        assert!(route("GET", "/admin/v1/nothing").unwrap_err().is_empty());
        let (i, p) = route("GET", "/admin/v1/tenants/a%20b/").unwrap();
        assert_eq!(ROUTES[i].1, "/admin/v1/tenants/{name}");
        assert_eq!(p, vec!["a b".to_string()]);
    }
}
