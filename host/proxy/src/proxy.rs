//! The request path: route, then answer directly or forward to the route's upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use wasmgate_config::{Config, RouteAction};

use crate::body::Body;
use crate::forward::{self, REQUEST_ID};
use crate::rescue::Rejection;
use crate::router::{Match, Router};
use crate::upstream::Upstream;

/// What the proxy knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
}

/// Everything one configuration needs to serve requests; replaced whole, never edited.
#[derive(Debug)]
pub(crate) struct Snapshot {
    router: Router,
    routes: Vec<RouteRuntime>,
    max_headers: usize,
}

#[derive(Debug)]
struct RouteRuntime {
    action: Action,
    strip_path: bool,
}

#[derive(Debug)]
enum Action {
    Upstream(Arc<Upstream>),
    Respond(Prepared),
}

/// A `respond` route's answer, built once.
#[derive(Debug)]
struct Prepared {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Snapshot {
    pub(crate) fn new(config: &Config) -> Self {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(u)))
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| RouteRuntime {
                strip_path: r.strip_path,
                action: match &r.action {
                    RouteAction::Upstream(i) => Action::Upstream(upstreams[*i].clone()),
                    RouteAction::Respond(respond) => {
                        let mut headers: HeaderMap = respond.headers.iter().cloned().collect();
                        if !respond.body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
                            headers.insert(
                                CONTENT_TYPE,
                                HeaderValue::from_static("text/plain; charset=utf-8"),
                            );
                        }
                        headers.insert(CONTENT_LENGTH, HeaderValue::from(respond.body.len()));
                        Action::Respond(Prepared {
                            status: respond.status,
                            headers,
                            body: Bytes::from(respond.body.clone()),
                        })
                    }
                },
            })
            .collect();
        Self {
            router: Router::new(&config.routes),
            routes,
            max_headers: config.gateway.max_headers,
        }
    }
}

/// The request handler shared by every connection.
#[derive(Debug)]
pub(crate) struct Proxy {
    snapshot: ArcSwap<Snapshot>,
}

impl Proxy {
    pub(crate) fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
        }
    }

    /// Serves one request. Never fails: every failure is a response made by [`Rejection`].
    pub(crate) async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let request_id = forward::request_id(req.headers());
        let method = req.method().clone();
        let snapshot = self.snapshot.load_full();
        let mut response = match self.serve(&snapshot, req, conn, &request_id).await {
            Ok(response) => response,
            Err(rejection) => return rejection.into_response(&request_id, &method),
        };
        response.headers_mut().insert(REQUEST_ID, request_id);
        response
    }

    async fn serve(
        &self,
        snapshot: &Snapshot,
        mut req: Request<Incoming>,
        conn: ConnInfo,
        request_id: &HeaderValue,
    ) -> Result<Response<Body>, Rejection> {
        if req.headers().len() > snapshot.max_headers {
            return Err(Rejection::HeadersTooLarge("too many header fields"));
        }
        let host = request_host(&req)?;
        let (route, prefix_len) = match snapshot.router.route(
            host.as_ref().map(Authority::host),
            req.uri().path(),
            req.method(),
            req.headers(),
        ) {
            Match::Found { route, prefix_len } => (route, prefix_len),
            Match::NotFound => return Err(Rejection::NoRoute),
            Match::MethodNotAllowed(methods) => {
                let allow = methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Rejection::MethodNotAllowed(
                    HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static("")),
                ));
            }
        };
        let route = &snapshot.routes[route];
        let upstream = match &route.action {
            Action::Respond(p) => return Ok(respond(p, req.method())),
            Action::Upstream(u) => u,
        };

        let target = upstream.pick();
        let path_and_query = if route.strip_path && prefix_len > 0 {
            stripped(req.uri(), prefix_len)
        } else {
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(target.authority.clone());
        parts.path_and_query = Some(path_and_query);
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|_| Rejection::BadRequest("invalid request target"))?;
        *req.version_mut() = Version::HTTP_11;

        let headers = req.headers_mut();
        forward::strip_hop_by_hop(headers);
        let original_host = match headers.get(HOST) {
            Some(h) => Some(h.clone()),
            None => host.and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        if let Some(h) = &original_host
            && !headers.contains_key(HOST)
        {
            // HTTP/2 clients send :authority instead of Host; HTTP/1.1 upstreams need Host.
            headers.insert(HOST, h.clone());
        }
        forward::add_forwarded(headers, conn.peer.ip(), conn.tls, original_host.as_ref());
        headers.insert(REQUEST_ID, request_id.clone());

        let (req_parts, body) = req.into_parts();
        let req = Request::from_parts(req_parts, Body::stream(body));
        let result = tokio::time::timeout(upstream.timeout, upstream.client.request(req)).await;
        let response = match result {
            Err(_) => {
                return Err(Rejection::Timeout {
                    upstream: upstream.name.clone(),
                    target: target.authority.to_string(),
                    timeout: upstream.timeout,
                });
            }
            Ok(Err(source)) if source.is_connect() => {
                upstream.eject(target);
                return Err(Rejection::Connect {
                    upstream: upstream.name.clone(),
                    target: target.authority.to_string(),
                    source,
                });
            }
            Ok(Err(source)) => {
                return Err(Rejection::Upstream {
                    upstream: upstream.name.clone(),
                    target: target.authority.to_string(),
                    source,
                });
            }
            Ok(Ok(response)) => response,
        };
        upstream.restore(target);
        let (mut parts, body) = response.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            Body::watched(body, upstream.timeout),
        ))
    }
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the `Host` header.
fn request_host(req: &Request<Incoming>) -> Result<Option<Authority>, Rejection> {
    if let Some(a) = req.uri().authority() {
        return Ok(Some(a.clone()));
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let Some(host) = hosts.next() else {
        if req.version() == Version::HTTP_11 {
            // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request without Host.
            return Err(Rejection::BadRequest("missing host header"));
        }
        return Ok(None);
    };
    if hosts.next().is_some() {
        return Err(Rejection::BadRequest("more than one host header"));
    }
    Authority::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes()))
        .ok()
        .filter(|a| !a.as_str().contains('@'))
        .map(Some)
        .ok_or(Rejection::BadRequest("invalid host header"))
}

/// The path with the route's matched prefix removed (`/users/1?x` less `/users` is `/1?x`).
fn stripped(uri: &Uri, prefix_len: usize) -> PathAndQuery {
    let path = uri.path();
    let rest = path.get(prefix_len..).unwrap_or("");
    let rest = if rest.is_empty() { "/" } else { rest };
    let text = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    PathAndQuery::from_maybe_shared(Bytes::from(text))
        .unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

fn respond(p: &Prepared, method: &Method) -> Response<Body> {
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::full(p.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = p.status;
    *response.headers_mut() = p.headers.clone();
    response
}
