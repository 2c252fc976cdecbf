//! Model-name routing: the first route whose prefix matches wins. Pure and allocation-free.

pub use crate::config::Route;

/// The route chosen for a client-facing model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub route: usize,
    /// The model name the upstream sees.
    pub upstream_model: &'a str,
}

pub fn resolve<'a>(routes: &[Route], model: &'a str) -> Option<Resolved<'a>> {
    routes.iter().enumerate().find_map(|(i, r)| {
        let rest = model.strip_prefix(r.prefix.as_str())?;
        let upstream_model = if r.strip_prefix { rest } else { model };
        Some(Resolved {
            route: i,
            upstream_model,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<Route> {
        vec![
            Route {
                prefix: "ollama/".into(),
                pool: 0,
                pool_name: "ollama".into(),
                strip_prefix: true,
                fallbacks: vec![],
                endpoints: crate::endpoint::EndpointSet::all(),
                anonymous: false,
                limits: crate::config::Limits::default(),
            },
            Route {
                prefix: "gpt-".into(),
                pool: 1,
                pool_name: "openai".into(),
                strip_prefix: false,
                fallbacks: vec![],
                endpoints: crate::endpoint::EndpointSet::all(),
                anonymous: false,
                limits: crate::config::Limits::default(),
            },
            Route {
                prefix: "gpt-4o".into(),
                pool: 0,
                pool_name: "never".into(),
                strip_prefix: false,
                fallbacks: vec![],
                endpoints: crate::endpoint::EndpointSet::all(),
                anonymous: false,
                limits: crate::config::Limits::default(),
            },
        ]
    }

    #[test]
    fn first_matching_prefix_wins_and_strip_is_applied() {
        let r = routes();
        assert_eq!(
            resolve(&r, "ollama/llama3"),
            Some(Resolved {
                route: 0,
                upstream_model: "llama3"
            })
        );
        assert_eq!(
            resolve(&r, "gpt-4o").unwrap().route,
            1,
            "order, not length, decides"
        );
        assert_eq!(resolve(&r, "gpt-4o").unwrap().upstream_model, "gpt-4o");
        assert_eq!(resolve(&r, "claude"), None);
    }
}
