//! The admin listener's HTTP API. It has no authentication: bind it to loopback or a private
//! network.
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 while the gateway serves, 503 once it drains |
//! | `GET /ready` | 200 when a configuration is loaded and the gateway is not draining (nor without Redis with `on_unavailable = "deny"`), else 503; the shared state's health in `state` |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//! | `GET /routes` | the routes served, in match order of the file |
//! | `GET /plugins` | every plugin entry: file, sha256, route, pooled instances, failures |
//! | `GET /config` | the configuration served, plugin secrets redacted |
//! | `POST /reload` | reloads the config file; 200 with a summary or 400 with every problem |
//! | `DELETE /cache` | drops every route's cached responses |
//! | `DELETE /cache/ROUTE` | drops route `ROUTE`'s cached responses (404 when it has no cache) |
//! | `DELETE /cache/ROUTE/PATH?QUERY` | drops `ROUTE`'s cached responses of `/PATH` (with a query: of that query only) |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wasmgate_config::{Config, HostPattern, PathPattern, RouteAction};
use wasmgate_proxy::Active;
use wasmgate_runtime::FailureKind;
use wasmgate_telemetry::CONTENT_TYPE as METRICS_CONTENT_TYPE;

use crate::Reloader;

/// A bound admin listener, ready to [`serve`](Admin::serve).
#[derive(Debug)]
pub struct Admin {
    listener: TcpListener,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    reloader: Reloader,
    draining: AtomicBool,
}

/// Tells the admin API the gateway is draining (`/health` and `/ready` then answer 503).
#[derive(Debug, Clone)]
pub struct Draining(Arc<State>);

impl Draining {
    /// Marks the gateway as draining.
    pub fn start(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }
}

impl Admin {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr, reloader: Reloader) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            state: Arc::new(State {
                reloader,
                draining: AtomicBool::new(false),
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle to mark the gateway as draining.
    pub fn draining(&self) -> Draining {
        Draining(self.state.clone())
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, stop: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let state = self.state.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "admin connection failed");
                        }
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
    }
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let control = state.reloader.control();
    if !authorized(control, req.headers()) {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "unauthorized", "message": "this admin API needs Authorization: Bearer <gateway.admin_token>"}),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"wasmgate admin\""),
        );
        return response;
    }
    let draining = state.draining.load(Ordering::Relaxed);
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/health") => {
            if draining {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "draining"}),
                )
            } else {
                json_response(StatusCode::OK, &json!({"status": "ok"}))
            }
        }
        (&Method::GET | &Method::HEAD, "/ready") => {
            let state = control.state_health();
            let state_json = json!({
                "backend": state.backend,
                "available": state.available,
                "on_unavailable": state.on_unavailable,
            });
            // Without its shared state a gateway with on_unavailable = "deny" refuses the
            // requests that need it: not ready, so a load balancer sends them elsewhere.
            let refusing = !state.available && state.on_unavailable == "deny";
            if draining || refusing {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"ready": false, "draining": draining, "state": state_json}),
                )
            } else {
                let routes = control.inspect(|a| a.config.routes.len());
                json_response(
                    StatusCode::OK,
                    &json!({"ready": true, "routes": routes, "state": state_json}),
                )
            }
        }
        (&Method::GET | &Method::HEAD, "/metrics") => Response::builder()
            .header(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)
            .body(Full::new(Bytes::from(control.metrics().encode())))
            .unwrap_or_default(),
        (&Method::GET | &Method::HEAD, "/routes") => {
            json_response(StatusCode::OK, &control.inspect(routes))
        }
        (&Method::GET | &Method::HEAD, "/plugins") => {
            json_response(StatusCode::OK, &control.inspect(plugins))
        }
        (&Method::GET | &Method::HEAD, "/config") => {
            json_response(StatusCode::OK, &control.inspect(config))
        }
        (&Method::GET | &Method::HEAD, "/upstreams") => {
            json_response(StatusCode::OK, &upstreams(&control.upstreams()))
        }
        (&Method::POST, "/reload") => {
            let file = state.reloader.path().display().to_string();
            match state.reloader.reload("admin API").await {
                Ok(r) => json_response(
                    StatusCode::OK,
                    &json!({
                        "result": "success",
                        "file": file,
                        "routes": r.routes,
                        "plugins": r.plugins,
                        "restart_needed": r.restart_needed,
                    }),
                ),
                Err(e) => json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"result": "failure", "file": file, "errors": e.problems}),
                ),
            }
        }
        (&Method::DELETE, path) if path == "/cache" || path.starts_with("/cache/") => {
            purge(control, req.uri())
        }
        (_, path) if path == "/cache" || path.starts_with("/cache/") => {
            method_not_allowed("DELETE")
        }
        (
            _,
            "/health" | "/ready" | "/metrics" | "/routes" | "/plugins" | "/config" | "/upstreams",
        ) => method_not_allowed("GET, HEAD"),
        (_, "/reload") => method_not_allowed("POST"),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "message": "no such admin endpoint"}),
        ),
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"error": "method_not_allowed", "message": "method not allowed"}),
    );
    r.headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    r
}

/// Whether the request may use the admin API: always without `gateway.admin_token` (of the
/// configuration being served, so a reload rotates it), else only with that bearer token,
/// compared in constant time.
fn authorized(control: &wasmgate_proxy::Control, headers: &http::HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    control.inspect(|active| {
        let Some(token) = &active.config.gateway.admin_token else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, credentials) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(credentials.trim())
            });
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.expose().as_bytes())))
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_default();
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_default()
}

fn loaded_at(active: &Active<'_>) -> String {
    humantime::format_rfc3339_seconds(active.loaded_at).to_string()
}

fn route_json(config: &Config, route: &wasmgate_config::Route) -> Value {
    let hosts: Vec<String> = route
        .hosts
        .iter()
        .map(|h| match h {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(suffix) => format!("*{suffix}"),
        })
        .collect();
    let paths: Vec<String> = route
        .paths
        .iter()
        .map(|p| match p {
            PathPattern::Prefix(p) => p.clone(),
            PathPattern::Exact(p) => format!("={p}"),
        })
        .collect();
    let methods: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
    let headers: serde_json::Map<String, Value> = route
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let mut out = json!({
        "name": route.name,
        "hosts": hosts,
        "paths": paths,
        "methods": methods,
        "headers": headers,
        "strip_path": route.strip_path,
        "max_body": route.max_body,
        "plugins": route.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
    });
    match &route.action {
        RouteAction::Upstream(i) => {
            let upstream = &config.upstreams[*i];
            out["upstream"] = json!({
                "name": upstream.name,
                "targets": upstream.targets.iter().map(|t| json!({
                    "address": t.address.as_str(),
                    "weight": t.weight,
                })).collect::<Vec<_>>(),
            });
        }
        RouteAction::Split(split) => {
            out["upstreams"] = split
                .backends
                .iter()
                .map(|b| {
                    json!({
                        "name": config.upstreams[b.upstream].name,
                        "weight": b.weight,
                        "pinned_by": {
                            "headers": b.headers.iter().map(|(n, v)| {
                                (n.as_str().to_owned(), Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
                            }).collect::<serde_json::Map<_, _>>(),
                            "cookies": b.cookies.iter().map(|(n, v)| (n.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
                        },
                    })
                })
                .collect();
        }
        RouteAction::Respond(r) => {
            out["respond"] = json!({"status": r.status.as_u16()});
        }
    }
    if let Some(m) = &route.mirror {
        out["mirror"] = json!({
            "upstream": config.upstreams[m.upstream].name,
            "percent": m.percent,
        });
    }
    out["cache"] = Value::Bool(route.cache.is_some());
    out["compression"] = match &route.compression {
        Some(c) => json!(c.rules.codecs.iter().map(|c| c.token()).collect::<Vec<_>>()),
        None => Value::Bool(false),
    };
    out
}

/// `DELETE /cache[/ROUTE[/PATH]]`.
fn purge(control: &wasmgate_proxy::Control, uri: &http::Uri) -> Response<Full<Bytes>> {
    let rest = uri.path().strip_prefix("/cache").unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let (route, path) = match rest.split_once('/') {
        Some((route, path)) => (Some(route), Some(format!("/{path}"))),
        None if rest.is_empty() => (None, None),
        None => (Some(rest), None),
    };
    let path = path.map(|p| match uri.query() {
        Some(q) => format!("{p}?{q}"),
        None => p,
    });
    match control.purge_cache(route, path.as_deref()) {
        Some(purged) => json_response(
            StatusCode::OK,
            &json!({
                "purged": purged
                    .iter()
                    .map(|(route, entries)| json!({"route": route, "entries": entries}))
                    .collect::<Vec<_>>(),
                "path": path,
            }),
        ),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({
                "error": "not_found",
                "message": format!("no route {:?} with a cache", route.unwrap_or_default()),
            }),
        ),
    }
}

fn routes(active: Active<'_>) -> Value {
    json!({
        "loaded_at": loaded_at(&active),
        "routes": active
            .config
            .routes
            .iter()
            .map(|r| route_json(active.config, r))
            .collect::<Vec<_>>(),
    })
}

fn upstreams(states: &[wasmgate_proxy::UpstreamState]) -> Value {
    let upstreams: Vec<Value> = states
        .iter()
        .map(|u| {
            let targets: Vec<Value> = u
                .targets
                .iter()
                .map(|t| {
                    json!({
                        "address": t.address,
                        "discovered_from": t.discovered_from,
                        "weight": t.weight,
                        "health": match (t.check, t.ejected_for) {
                            (Some(false), _) => "unhealthy",
                            (_, Some(_)) => "ejected",
                            _ => "healthy",
                        },
                        "check": t.check.map(|passing| if passing { "passing" } else { "failing" }),
                        "ejected_for_ms": t.ejected_for.map(|d| d.as_millis()),
                        "ejections_in_row": t.ejections_in_row,
                        "errors_in_row": t.errors_in_row,
                        "server_errors_in_row": t.server_errors_in_row,
                        "in_flight": t.in_flight,
                    })
                })
                .collect();
            let b = &u.breaker;
            json!({
                "name": u.name,
                "balance": u.balance,
                "breaker": {
                    "open_connections": b.open_connections,
                    "max_connections": b.max_connections,
                    "pending": b.pending,
                    "max_pending": b.max_pending,
                    "in_flight": b.in_flight,
                    "max_requests": b.max_requests,
                },
                "targets": targets,
            })
        })
        .collect();
    json!({ "upstreams": upstreams })
}

fn plugins(active: Active<'_>) -> Value {
    let bound = active.runtime.map_or(&[][..], |r| &r.bound[..]);
    let entries: Vec<Value> = bound
        .iter()
        .map(|b| {
            let failures: serde_json::Map<String, Value> = [
                FailureKind::Error,
                FailureKind::Trap,
                FailureKind::Timeout,
                FailureKind::OutOfMemory,
                FailureKind::Unavailable,
            ]
            .into_iter()
            .map(|k| (k.as_str().to_owned(), json!(b.binding.failures.get(k))))
            .collect();
            json!({
                "name": b.plugin,
                "route": b.route,
                "file": b.file.display().to_string(),
                "sha256": b.sha256,
                "pooled_instances": b.binding.pooled(),
                "failures": failures,
            })
        })
        .collect();
    json!({"loaded_at": loaded_at(&active), "plugins": entries})
}

fn config(active: Active<'_>) -> Value {
    let c = active.config;
    let g = &c.gateway;
    let routes: Vec<Value> = c
        .routes
        .iter()
        .map(|r| {
            let mut route = route_json(c, r);
            route["plugins"] = r
                .plugins
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "file": p.file.display().to_string(),
                        "config": redact(&p.config, false),
                        "memory": p.memory,
                        "timeout_ms": p.timeout.as_millis(),
                        "on_error": format!("{:?}", p.on_error).to_lowercase(),
                        "isolation": format!("{:?}", p.isolation).to_lowercase(),
                    })
                })
                .collect();
            route
        })
        .collect();
    // The file's values of the settings that wait for a restart, under their dotted keys.
    let pending: serde_json::Map<String, Value> = active
        .pending_restart
        .map(|p| {
            let file = gateway_json(&p.file);
            p.keys
                .iter()
                .map(|key| {
                    let field = key.trim_start_matches("gateway.").replace('.', "_");
                    let value = GATEWAY_FIELDS
                        .iter()
                        .find(|(k, _)| *k == field)
                        .and_then(|(_, json)| file.get(*json))
                        .cloned()
                        .unwrap_or(Value::Null);
                    ((*key).to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "file": c.file.display().to_string(),
        "loaded_at": loaded_at(&active),
        "gateway": gateway_json(g),
        "pending_restart": pending,
        "upstreams": c.upstreams.iter().map(|u| json!({
            "name": u.name,
            "targets": u.targets.iter().map(|t| json!({"address": t.address.as_str(), "weight": t.weight})).collect::<Vec<_>>(),
            "connect_timeout_ms": u.connect_timeout.as_millis(),
            "timeout_ms": u.timeout.as_millis(),
            "pool_idle_timeout_ms": u.pool_idle_timeout.as_millis(),
            "pool_max_idle": u.pool_max_idle,
            "protocol": u.protocol.as_str(),
        })).collect::<Vec<_>>(),
        "routes": routes,
    })
}

/// Restart-only settings (`gateway.` and dots dropped, `_` for the dot in `tls.listen`) and the
/// field of [`gateway_json`] that shows each.
const GATEWAY_FIELDS: &[(&str, &str)] = &[
    ("listen", "listen"),
    ("tls_listen", "tls_listen"),
    ("admin", "admin"),
    ("header_read_timeout", "header_read_timeout_ms"),
    ("idle_timeout", "idle_timeout_ms"),
    ("send_timeout", "send_timeout_ms"),
    ("max_header_size", "max_header_size"),
    ("max_headers", "max_headers"),
    ("shutdown_grace", "shutdown_grace_ms"),
    ("http2", "http2"),
    ("tracing", "tracing"),
    ("watch", "watch"),
    ("workers", "workers"),
    ("proxy_protocol", "proxy_protocol"),
    ("max_connections", "max_connections"),
    ("max_connections_per_client", "max_connections_per_client"),
];

/// `[gateway]` as JSON: durations in milliseconds, paths absolute.
fn gateway_json(g: &wasmgate_config::Gateway) -> Value {
    let addrs = |a: &[std::net::SocketAddr]| a.iter().map(ToString::to_string).collect::<Vec<_>>();
    json!({
        "listen": addrs(&g.listen),
        "tls_listen": g.tls.as_ref().map(|t| addrs(&t.listen)),
        "admin": g.admin.map(|a| a.to_string()),
        "admin_token": g.admin_token.as_ref().map(|_| "(set)"),
        "plugins_dir": g.plugins_dir.display().to_string(),
        "plugin_cache_dir": g.plugin_cache_dir.as_ref().map(|p| p.display().to_string()),
        "access_log": match &g.access_log {
            wasmgate_config::AccessLog::Stdout => "stdout".to_owned(),
            wasmgate_config::AccessLog::Off => "off".to_owned(),
            wasmgate_config::AccessLog::File(p) => p.display().to_string(),
        },
        "watch": g.watch,
        "workers": g.workers,
        "proxy_protocol": g.proxy_protocol,
        "max_connections": g.max_connections,
        "max_connections_per_client": g.max_connections_per_client,
        "header_read_timeout_ms": g.header_read_timeout.as_millis(),
        "idle_timeout_ms": g.idle_timeout.as_millis(),
        "send_timeout_ms": g.send_timeout.as_millis(),
        "max_header_size": g.max_header_size,
        "max_headers": g.max_headers,
        "shutdown_grace_ms": g.shutdown_grace.as_millis(),
        "tracing": g.tracing.as_ref().map(|t| json!({
            "endpoint": t.endpoint,
            "sample_ratio": t.sample_ratio,
            "service_name": t.service_name,
            // Header values are often API keys.
            "headers": t.headers.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            "timeout_ms": t.timeout.as_millis(),
            "export_interval_ms": t.export_interval.as_millis(),
        })),
        "http2": {
            "max_concurrent_streams": g.http2.max_concurrent_streams,
            "max_pending_reset_streams": g.http2.max_pending_reset_streams,
            "max_local_reset_streams": g.http2.max_local_reset_streams,
            "keepalive_interval_ms": g.http2.keepalive_interval.map(|d| d.as_millis()),
            "keepalive_timeout_ms": g.http2.keepalive_timeout.as_millis(),
        },
    })
}

/// Key names whose values are secrets, matched as lowercase substrings: any name with `key`
/// (`keys`, `api_key`), `secret`, `passw` (`password`), `token`, `user` (`users`: password
/// hashes), `jwks`, `private`, `credential`, and the headers that carry credentials
/// (`authorization`, `cookie`, as in a transform's `set_headers`).
const SECRET_KEYS: &[&str] = &[
    "key",
    "secret",
    "passw",
    "token",
    "user",
    "jwks",
    "private",
    "credential",
    "authorization",
    "cookie",
];

/// A plugin config with everything under a secret-looking key replaced by `"<redacted>"`: every
/// string, number and boolean, and a table's keys too (a table under `keys` may map keys to
/// names as easily as names to keys). Structure elsewhere stays, so consumer names given as
/// values (`consumers = [{ name = "alice", keys = [...] }]`) remain readable.
fn redact(value: &Value, secret: bool) -> Value {
    match value {
        Value::Object(map) if secret => Value::String(match map.len() {
            1 => "<redacted: 1 entry>".to_owned(),
            n => format!("<redacted: {n} entries>"),
        }),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let hidden = SECRET_KEYS.iter().any(|s| lower.contains(s));
                    (k.clone(), redact(v, hidden))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| redact(v, secret)).collect()),
        Value::Null => Value::Null,
        _ if secret => Value::String("<redacted>".into()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secrets_but_keeps_structure_and_harmless_keys() {
        let config = json!({
            "header": "x-api-key",
            "consumers": [{"name": "alice", "keys": ["k-alice", "k-alice-2"]}],
            "secret": "s3cr3t",
            "users": {"alice": "$2y$05$hash"},
            "jwks": {"keys": [{"kty": "RSA", "n": "abc"}]},
            "limit": 100,
        });
        let redacted = redact(&config, false);
        assert_eq!(redacted["header"], "x-api-key");
        assert_eq!(redacted["consumers"][0]["name"], "alice");
        assert_eq!(
            redacted["consumers"][0]["keys"],
            json!(["<redacted>", "<redacted>"])
        );
        assert_eq!(redacted["secret"], "<redacted>");
        assert_eq!(redacted["users"], "<redacted: 1 entry>");
        assert_eq!(redacted["jwks"], "<redacted: 1 entry>");
        assert_eq!(redacted["limit"], 100);
        assert!(!redacted.to_string().contains("k-alice"));
    }

    #[test]
    fn a_table_under_a_secret_key_hides_its_keys_whichever_way_round_it_is() {
        // key-auth's legacy table written backwards: the API keys are the table's keys.
        let reversed = json!({"keys": {"k-alice": "alice", "k-bob": "bob"}});
        let redacted = redact(&reversed, false).to_string();
        assert!(
            !redacted.contains("k-alice") && !redacted.contains("k-bob"),
            "{redacted}"
        );
    }
}
