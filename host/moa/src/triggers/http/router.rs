//! Spin's HTTP routing rules: exact routes, `:name` segments, trailing `/...` wildcards; the most
//! specific match wins; private routes never match outside requests.

use super::config::{HttpRoute, HttpTriggerConfig, normalize_route};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// One public route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route as written in the manifest (`/hello/...`).
    pub raw: String,
    /// The base path plus the route (`/api/hello/...`).
    pub full: String,
    pub component: String,
    /// Middleware in front of `component`, outermost first.
    pub middleware: Vec<String>,
    segments: Vec<Segment>,
    wildcard: bool,
}

/// The result of routing a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    pub component: &'a str,
    /// Middleware in front of `component`, outermost first.
    pub middleware: &'a [String],
    /// The full matched route pattern (`/api/hello/...`).
    pub matched_route: &'a str,
    /// The route as written in the manifest.
    pub raw_route: &'a str,
    /// The matched route without its `/...` (Spin's `spin-component-route`).
    pub component_route: String,
    /// What the wildcard matched, with a leading `/` (empty for exact routes).
    pub path_info: String,
    /// `:name` segment values.
    pub params: Vec<(String, String)>,
}

/// The app's routing table, most specific route first.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

fn split(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

impl Router {
    /// Builds the table from the manifest's triggers under `base` (`/` if none).
    pub fn new(base: &str, triggers: &[HttpTriggerConfig]) -> Self {
        let base = normalize_route(base);
        let mut routes = Vec::new();
        for trigger in triggers {
            let HttpRoute::Path(raw) = &trigger.route else {
                continue;
            };
            let full = if base == "/" {
                normalize_route(raw)
            } else {
                normalize_route(&format!("{base}{raw}"))
            };
            let (pattern, wildcard) = match full.strip_suffix("/...") {
                Some(prefix) => (prefix.to_string(), true),
                None if full == "/..." => (String::new(), true),
                None => (full.clone(), false),
            };
            let segments = split(&pattern)
                .into_iter()
                .map(|s| match s.strip_prefix(':') {
                    Some(name) => Segment::Param(name.to_string()),
                    None => Segment::Literal(s.to_string()),
                })
                .collect();
            routes.push(Route {
                raw: raw.clone(),
                full,
                component: trigger.component.clone(),
                middleware: trigger.middleware.clone(),
                segments,
                wildcard,
            });
        }
        // Most specific first: exact before wildcard, then more segments, then more literals.
        routes.sort_by_key(|r| {
            let literals = r
                .segments
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count();
            (
                r.wildcard,
                std::cmp::Reverse(r.segments.len()),
                std::cmp::Reverse(literals),
            )
        });
        Router { routes }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the route for a request path (percent-encoding is compared as written).
    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        let parts = split(path);
        'routes: for route in &self.routes {
            if parts.len() < route.segments.len()
                || (!route.wildcard && parts.len() != route.segments.len())
            {
                continue;
            }
            let mut params = Vec::new();
            for (segment, part) in route.segments.iter().zip(&parts) {
                match segment {
                    Segment::Literal(lit) if lit == part => {}
                    Segment::Literal(_) => continue 'routes,
                    Segment::Param(name) => params.push((name.clone(), (*part).to_string())),
                }
            }
            let rest = &parts[route.segments.len()..];
            let path_info = if route.wildcard && !rest.is_empty() {
                let mut info = format!("/{}", rest.join("/"));
                if path.ends_with('/') {
                    info.push('/');
                }
                info
            } else {
                String::new()
            };
            let component_route = route
                .full
                .strip_suffix("/...")
                .unwrap_or(&route.full)
                .to_string();
            return Some(RouteMatch {
                component: &route.component,
                middleware: &route.middleware,
                matched_route: &route.full,
                raw_route: &route.raw,
                component_route,
                path_info,
                params,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moa_manifest::Position;

    fn trigger(route: &str, component: &str) -> HttpTriggerConfig {
        HttpTriggerConfig {
            route: HttpRoute::Path(route.into()),
            component: component.into(),
            middleware: Vec::new(),
            position: Position { line: 1, column: 1 },
        }
    }

    fn router() -> Router {
        Router::new(
            "/",
            &[
                trigger("/...", "fallback"),
                trigger("/hello/...", "hello"),
                trigger("/hello/world", "exact"),
                trigger("/users/:id", "user"),
                trigger("/users/me", "me"),
                HttpTriggerConfig {
                    route: HttpRoute::Private,
                    component: "private".into(),
                    middleware: Vec::new(),
                    position: Position { line: 1, column: 1 },
                },
            ],
        )
    }

    #[test]
    fn most_specific_route_wins() {
        let r = router();
        assert_eq!(r.route("/hello/world").unwrap().component, "exact");
        assert_eq!(r.route("/hello/world/").unwrap().component, "exact");
        assert_eq!(r.route("/hello/there").unwrap().component, "hello");
        assert_eq!(r.route("/hello").unwrap().component, "hello");
        assert_eq!(r.route("/users/me").unwrap().component, "me");
        assert_eq!(r.route("/users/42").unwrap().component, "user");
        assert_eq!(r.route("/users/42/x").unwrap().component, "fallback");
        assert_eq!(r.route("/").unwrap().component, "fallback");
    }

    #[test]
    fn wildcard_path_info_and_params_are_reported() {
        let r = router();
        let m = r.route("/hello/a/b").unwrap();
        assert_eq!(m.path_info, "/a/b");
        assert_eq!(m.matched_route, "/hello/...");
        assert_eq!(m.component_route, "/hello");
        let m = r.route("/users/42").unwrap();
        assert_eq!(m.params, [("id".to_string(), "42".to_string())]);
        assert_eq!(m.path_info, "");
    }

    #[test]
    fn private_routes_and_unmatched_paths_are_not_served() {
        let r = Router::new("/", &[trigger("/a", "a")]);
        assert!(r.route("/b").is_none());
        assert!(r.route("/a/b").is_none());
        assert!(
            !router()
                .routes()
                .iter()
                .any(|route| route.component == "private")
        );
    }

    #[test]
    fn base_path_prefixes_every_route() {
        let r = Router::new("/api", &[trigger("/orders/...", "orders")]);
        assert_eq!(r.route("/api/orders/1").unwrap().component, "orders");
        assert!(r.route("/orders/1").is_none());
    }
}
