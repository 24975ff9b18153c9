//! `cors`: a Wasmgate plugin for Cross-Origin Resource Sharing. It answers preflight requests
//! itself (`204`), adds `Access-Control-Allow-Origin` (and the other CORS headers) to responses
//! for allowed origins, adds `Vary: Origin`, and never names an origin that is not allowed.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "cors"
//! config = { origins = ["https://app.example.com"], credentials = true, max_age = "10m" }
//! ```
//!
//! Per request: `on_request` reads the three CORS request headers in one call (and the method
//! only when they look like a preflight), and writes the allowed origin to the context;
//! `on_response` reads it and `Vary`, and makes one batched header edit. With `origins = ["*"]`
//! the response hook is a single edit. See the README for every key and decision.

use std::collections::HashSet;

use wasmgate_sdk::config::Duration;
use wasmgate_sdk::prelude::*;

mod origin;

use origin::Origins;

const ALLOW_ORIGIN: &str = "access-control-allow-origin";
const ALLOW_CREDENTIALS: &str = "access-control-allow-credentials";
const ALLOW_METHODS: &str = "access-control-allow-methods";
const ALLOW_HEADERS: &str = "access-control-allow-headers";
const EXPOSE_HEADERS: &str = "access-control-expose-headers";
const MAX_AGE: &str = "access-control-max-age";

/// The context key carrying the allowed origin from `on_request` to `on_response`.
const ORIGIN_KEY: &str = "cors.origin";

/// The route entry's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Allowed origins: `"https://app.example.com"` (scheme and host compared
    /// case-insensitively, the port exactly; the default port may be left out),
    /// `"https://*.example.com"` (any subdomain, at any depth), or `["*"]` alone (every
    /// origin). Required.
    pub origins: Vec<String>,
    /// `Access-Control-Allow-Methods` of preflight answers. Default
    /// `["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"]`.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// `Access-Control-Allow-Headers` of preflight answers. Default: none given, so the
    /// preflight's `Access-Control-Request-Headers` is echoed (every header allowed).
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    /// `Access-Control-Expose-Headers`: response headers scripts may read. Default none.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether browsers may send cookies and credentials (`Access-Control-Allow-Credentials:
    /// true`). Not allowed with `origins = ["*"]`. Default `false`.
    #[serde(default)]
    pub credentials: bool,
    /// How long browsers may cache a preflight answer (`Access-Control-Max-Age`, whole
    /// seconds). Default: not sent (browsers then cache for 5 s).
    #[serde(default)]
    pub max_age: Option<Duration>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"]
        .map(str::to_owned)
        .to_vec()
}

/// The plugin, built once per instance from a [`Config`]; every header value precomputed.
#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    credentials: bool,
    methods: String,
    /// `None`: echo `Access-Control-Request-Headers`.
    headers: Option<String>,
    expose_headers: Option<String>,
    max_age: Option<String>,
}

/// The three request headers that tell a CORS request, read in one host call.
struct CorsRequest {
    origin: Option<String>,
    request_method: Option<String>,
    request_headers: Option<String>,
}

impl Plugin for Cors {
    /// Taken as JSON and read into [`Config`] in [`Plugin::new`], so that a type error names the
    /// key path (`origins[0]: invalid type ...`).
    type Config = serde_json::Value;

    fn new(config: serde_json::Value) -> Result<Self, ConfigError> {
        let config: Config = wasmgate_sdk::config::read(config)?;
        let origins = Origins::new(&config.origins)?;
        if config.credentials && origins == Origins::Any {
            return Err(ConfigError::new(
                r#"credentials = true with origins = ["*"]: browsers refuse "*" with credentials, and echoing every origin would let any site make requests with the user's cookies; list the origins"#,
            ));
        }
        if config.methods.is_empty() {
            return Err(ConfigError::new(
                "methods: must list at least one method (leave it out for the default list)",
            ));
        }
        let methods = list("methods", &config.methods, config.credentials, |m| {
            http::Method::from_bytes(m.as_bytes()).is_ok()
        })?;
        let headers = config
            .headers
            .as_deref()
            .map(|h| list("headers", h, config.credentials, is_header_name))
            .transpose()?;
        let expose_headers = list(
            "expose_headers",
            &config.expose_headers,
            config.credentials,
            is_header_name,
        )?;
        Ok(Self {
            origins,
            credentials: config.credentials,
            methods: methods.unwrap_or_default(),
            headers: headers.map(Option::unwrap_or_default),
            expose_headers,
            max_age: config.max_age.map(|age| age.as_secs().to_string()),
        })
    }

    /// The CORS request headers and the method come with the request call, the remembered
    /// origin with the response call.
    fn inputs(&self) -> Inputs {
        Inputs::new()
            .request_header("origin")
            .request_header("access-control-request-method")
            .request_header("access-control-request-headers")
            .method()
            .context(ORIGIN_KEY)
    }

    fn on_request(&self, req: &mut Request<'_>, ctx: &Context) -> Result<Action, Error> {
        let request = CorsRequest::read(req);
        let Some(origin) = request.origin.as_deref() else {
            return Ok(Action::Continue);
        };
        let allowed = self.origins.allows(origin);
        // A preflight is an OPTIONS request with Origin and Access-Control-Request-Method; an
        // OPTIONS without the latter is an ordinary request, forwarded.
        if request.request_method.is_some() && req.method() == http::Method::OPTIONS {
            return Ok(if allowed {
                self.preflight(origin, request.request_headers.as_deref())
            } else {
                refusal()
            });
        }
        if allowed && self.origins != Origins::Any {
            ctx.set(ORIGIN_KEY, origin);
        }
        Ok(Action::Continue)
    }

    fn on_response(&self, resp: &mut Response<'_>, ctx: &Context) -> Result<Action, Error> {
        if self.origins == Origins::Any {
            // The same headers whatever the origin: nothing to remember, no Vary.
            let mut set = vec![(ALLOW_ORIGIN, "*")];
            let mut remove = vec![ALLOW_CREDENTIALS];
            self.expose(&mut set, &mut remove);
            resp.edit_headers(&set, &remove)?;
            return Ok(Action::Continue);
        }
        let origin = ctx.get(ORIGIN_KEY);
        let vary = vary_with_origin(&resp.header_all("vary"));
        let mut set = Vec::with_capacity(4);
        // The plugin owns the route's CORS headers: whatever the upstream said is replaced, or
        // removed when the origin is not allowed.
        let mut remove = Vec::with_capacity(3);
        match origin.as_deref() {
            Some(origin) => {
                set.push((ALLOW_ORIGIN, origin));
                if self.credentials {
                    set.push((ALLOW_CREDENTIALS, "true"));
                } else {
                    remove.push(ALLOW_CREDENTIALS);
                }
                self.expose(&mut set, &mut remove);
            }
            None => remove.extend([ALLOW_ORIGIN, ALLOW_CREDENTIALS, EXPOSE_HEADERS]),
        }
        if let Some(vary) = vary.as_deref() {
            set.push(("vary", vary));
        }
        resp.edit_headers(&set, &remove)?;
        Ok(Action::Continue)
    }
}

impl CorsRequest {
    fn read(req: &Request<'_>) -> Self {
        let mut values = req
            .headers_get(&[
                "origin",
                "access-control-request-method",
                "access-control-request-headers",
            ])
            .into_iter();
        Self {
            origin: values.next().flatten(),
            request_method: values.next().flatten(),
            request_headers: values.next().flatten(),
        }
    }
}

impl Cors {
    /// The answer to an allowed preflight.
    fn preflight(&self, origin: &str, request_headers: Option<&str>) -> Action {
        let any = self.origins == Origins::Any;
        let mut answer = Action::respond(204)
            .header(ALLOW_ORIGIN, if any { "*" } else { origin })
            .header(ALLOW_METHODS, self.methods.as_str());
        let allow_headers = match &self.headers {
            Some(configured) => Some(configured.as_str()),
            None => request_headers,
        };
        if let Some(allow_headers) = allow_headers.filter(|h| !h.is_empty()) {
            answer = answer.header(ALLOW_HEADERS, allow_headers);
        }
        if let Some(max_age) = &self.max_age {
            answer = answer.header(MAX_AGE, max_age.as_str());
        }
        if self.credentials {
            answer = answer.header(ALLOW_CREDENTIALS, "true");
        }
        let vary = match (any, self.headers.is_none()) {
            (false, true) => Some("Origin, Access-Control-Request-Headers"),
            (false, false) => Some("Origin"),
            (true, true) => Some("Access-Control-Request-Headers"),
            (true, false) => None,
        };
        if let Some(vary) = vary {
            answer = answer.header("vary", vary);
        }
        answer
    }

    fn expose<'a>(&'a self, set: &mut Vec<(&str, &'a str)>, remove: &mut Vec<&str>) {
        match &self.expose_headers {
            Some(expose) => set.push((EXPOSE_HEADERS, expose)),
            None => remove.push(EXPOSE_HEADERS),
        }
    }
}

/// The answer to a preflight from an origin that is not allowed: no CORS headers, so the
/// browser fails it; 403 says why to anyone looking.
fn refusal() -> Action {
    Action::reject(
        403,
        "forbidden",
        "origin not allowed by the route's CORS policy",
    )
    .header("vary", "Origin")
}

/// The `Vary` value to set so that it lists `Origin`, or `None` when it already does (or is
/// `*`). Existing values are kept, joined into one field.
fn vary_with_origin(current: &[String]) -> Option<String> {
    let listed = current
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|token| token == "*" || token.eq_ignore_ascii_case("origin"));
    if listed {
        return None;
    }
    let mut tokens: Vec<&str> = current
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .collect();
    tokens.push("Origin");
    Some(tokens.join(", "))
}

fn is_header_name(name: &str) -> bool {
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// Checks a list of `key` and joins it with `, `; `None` when empty. `*` is a wildcard for
/// browsers only without credentials, so it is refused with them.
fn list(
    key: &str,
    items: &[String],
    credentials: bool,
    valid: impl Fn(&str) -> bool,
) -> Result<Option<String>, ConfigError> {
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        if item == "*" {
            if credentials {
                return Err(ConfigError::new(format!(
                    r#"{key}[{i}] = "*": browsers do not treat "*" as a wildcard with credentials = true; list the values"#
                )));
            }
        } else if !valid(item) {
            return Err(ConfigError::new(format!(
                "{key}[{i}] = {item:?}: not a valid {}",
                if key == "methods" {
                    "method"
                } else {
                    "header name"
                }
            )));
        }
        if !seen.insert(item.to_ascii_lowercase()) {
            return Err(ConfigError::new(format!(
                "{key}[{i}] = {item:?}: listed twice"
            )));
        }
    }
    Ok((!items.is_empty()).then(|| items.join(", ")))
}

wasmgate_sdk::export!(Cors);

#[cfg(test)]
mod tests;
