//! The request path: route, run the route's plugin chain, then answer directly or forward to the
//! route's upstream, and run the chain's response phase.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderValue, UPGRADE,
};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use wasmgate_config::{Config, Protocols, RouteAction};
use wasmgate_runtime::{
    Chain, Context, RequestOutcome, RequestView, ResponseOutcome, ResponseView, Runtime,
};
use wasmgate_telemetry::{AccessLog, Metrics, RouteMetrics, UpstreamOutcome};

use crate::body::Body;
use crate::control::PendingRestart;
use crate::forward::{self, REQUEST_ID};
use crate::pool::SendError;
use crate::record::{Arrival, Record, Recorded, Trace};
use crate::rescue::{self, LocalReply, Rejection};
use crate::router::{Match, Router};
use crate::tunnel;
use crate::upstream::Upstream;

/// What the proxy knows about the connection a request came on.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    /// The subject of the client's verified certificate (`[gateway.tls] client_auth`).
    pub(crate) client_subject: Option<Arc<str>>,
}

/// The context key under which plugins find the verified client certificate's subject.
pub(crate) const CLIENT_SUBJECT_KEY: &str = "tls.client_subject";

/// Everything one configuration needs to serve requests; replaced whole, never edited.
#[derive(Debug)]
pub(crate) struct Snapshot {
    router: Router,
    routes: Vec<RouteRuntime>,
    max_headers: usize,
    body_idle: Duration,
    /// Metrics of each route, by index, and of requests no route matched.
    route_metrics: Vec<Arc<RouteMetrics>>,
    unrouted: Arc<RouteMetrics>,
    pub(crate) access_log: Arc<AccessLog>,
    /// The configuration this snapshot serves, for the admin API.
    pub(crate) config: Arc<Config>,
    /// Keeps the plugin engine and every binding alive as long as the snapshot serves.
    pub(crate) runtime: Option<Runtime>,
    /// When this snapshot started serving.
    pub(crate) loaded_at: SystemTime,
    /// What its file asked for that waits for a restart.
    pub(crate) pending_restart: Option<PendingRestart>,
    /// The port of the first TLS listener, for redirects to HTTPS.
    pub(crate) https_port: Option<u16>,
}

#[derive(Debug)]
struct RouteRuntime {
    action: Action,
    strip_path: bool,
    protocols: Protocols,
    https_redirect: bool,
    preserve_host: bool,
    max_body: usize,
    chain: Option<Arc<Chain>>,
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
    /// `clients` holds the TLS configuration of each of `config`'s upstreams, in order.
    pub(crate) fn new(
        config: Arc<Config>,
        runtime: Option<Runtime>,
        clients: &[Option<Arc<rustls::ClientConfig>>],
        metrics: &Metrics,
        access_log: Arc<AccessLog>,
    ) -> Self {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let client = clients.get(i).and_then(Option::as_ref);
                Arc::new(Upstream::new(u, client, config.gateway.workers, metrics))
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| RouteRuntime {
                strip_path: r.strip_path,
                protocols: r.protocols,
                https_redirect: r.https_redirect,
                preserve_host: r.preserve_host,
                max_body: r.max_body,
                chain: runtime.as_ref().and_then(|rt| rt.chain(i)).cloned(),
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
                        if !matches!(respond.status.as_u16(), 204 | 304) {
                            headers.insert(CONTENT_LENGTH, HeaderValue::from(respond.body.len()));
                        }
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
            body_idle: config.gateway.header_read_timeout,
            route_metrics: config
                .routes
                .iter()
                .map(|r| Arc::new(metrics.route(&r.name)))
                .collect(),
            unrouted: Arc::new(metrics.route("")),
            access_log,
            runtime,
            loaded_at: SystemTime::now(),
            pending_restart: None,
            https_port: None,
            config,
        }
    }
}

/// The request handler shared by every connection.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) snapshot: ArcSwap<Snapshot>,
}

/// A routed request, ready to be answered or forwarded.
struct Routed<'s> {
    route: &'s RouteRuntime,
    prefix_len: usize,
    /// The host the client asked for, as a header value: for `Host` on the upstream request when
    /// the client's target was absolute, and for `X-Forwarded-Host`.
    host: Option<HeaderValue>,
    /// The longest pause allowed while a body is read into memory for plugins.
    body_idle: Duration,
}

impl Proxy {
    pub(crate) fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
        }
    }

    /// Serves one request. Never fails: every failure is a response made by [`Rejection`].
    /// The request is counted and logged once its response body has been sent.
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<Recorded> {
        let start = Instant::now();
        let request_id = forward::request_id(req.headers());
        let method = req.method().clone();
        // gRPC runs over HTTP/2 only: an HTTP/1.1 client must not get an error as a 200.
        let grpc = req.version() == Version::HTTP_2 && rescue::is_grpc(req.headers());
        // In-flight requests finish on the snapshot they started with, whatever a reload swaps in.
        let snapshot = self.snapshot.load_full();
        let (req, arrival) = if snapshot.access_log.enabled() {
            let bytes_in = Arc::new(AtomicU64::new(0));
            let arrival = Arrival {
                time: SystemTime::now(),
                client: conn.peer.ip(),
                host: log_host(&req),
                path: req.uri().path().to_owned(),
                bytes_in: bytes_in.clone(),
                client_cert: conn.client_subject.clone(),
            };
            (req.map(|b| Body::counted(b, bytes_in)), Some(arrival))
        } else {
            (req.map(Body::stream), None)
        };
        let mut trace = Trace::default();
        let response = match serve(&snapshot, req, conn, &request_id, &mut trace).await {
            Ok(response) if grpc && response.extensions().get::<LocalReply>().is_some() => {
                rescue::grpc_local_reply(response, &request_id)
            }
            Ok(mut response) => {
                response
                    .headers_mut()
                    .insert(REQUEST_ID, request_id.clone());
                if method == Method::HEAD {
                    // A plugin's answer to a HEAD request keeps its headers, not its body.
                    *response.body_mut() = Body::empty();
                }
                response
            }
            Err(rejection) if grpc => rejection.into_grpc_response(&request_id),
            Err(rejection) => rejection.into_response(&request_id, &method),
        };
        let route = trace
            .route
            .map_or(&snapshot.unrouted, |i| &snapshot.route_metrics[i])
            .clone();
        let (parts, body) = response.into_parts();
        let record = Record {
            start,
            method,
            status: parts.status.as_u16(),
            request_id,
            route,
            trace,
            arrival,
            log: snapshot.access_log.clone(),
        };
        Response::from_parts(parts, Recorded::new(body, record))
    }
}

/// The host the client asked for, as written, for the access log.
fn log_host<B>(req: &Request<B>) -> Option<String> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str().to_owned()),
        None => req
            .headers()
            .get(HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
    }
}

async fn serve(
    snapshot: &Snapshot,
    req: Request<Body>,
    conn: ConnInfo,
    request_id: &HeaderValue,
    trace: &mut Trace,
) -> Result<Response<Body>, Rejection> {
    if req.headers().len() > snapshot.max_headers {
        return Err(Rejection::HeadersTooLarge("too many header fields"));
    }
    if has_dot_segment(req.uri().path()) {
        // `/public/../admin` must not be routed as `/public`; clients normalise such paths
        // themselves, so only crafted requests carry them.
        return Err(Rejection::BadRequest("path contains a dot segment"));
    }
    let host = request_host(&req)?;
    let routed_host = host.as_ref().map(|(a, _)| a.host().trim_end_matches('.'));
    let (route, prefix_len) =
        match snapshot
            .router
            .route(routed_host, req.uri().path(), req.method(), req.headers())
        {
            Match::Found { route, prefix_len } => (route, prefix_len),
            Match::NotFound => return Err(Rejection::NoRoute),
            Match::MethodNotAllowed { route, methods } => {
                // Counted and logged under the route that matched all but the method.
                trace.route = Some(route);
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
    trace.route = Some(route);
    let runtime = &snapshot.routes[route];
    if !runtime.protocols.allows(conn.tls) {
        let host = host.as_ref().map(|(a, _)| a.host());
        return match (runtime.https_redirect, host) {
            (true, Some(host)) => Ok(https_redirect(host, snapshot.https_port, req.uri())),
            _ => Err(Rejection::HttpsRequired {
                http1: req.version() < Version::HTTP_2,
            }),
        };
    }
    let routed = Routed {
        route: runtime,
        prefix_len,
        host: host.map(|(_, value)| value),
        body_idle: snapshot.body_idle,
    };
    match &routed.route.chain {
        None => {
            let (parts, body) = req.into_parts();
            dispatch(&routed, parts, body, conn, request_id, trace).await
        }
        // Boxed: the plugin calls' futures are large, and every request's future (boxed and
        // moved by hyper) would otherwise be as large as they are, with or without plugins.
        Some(chain) => {
            Box::pin(serve_with_plugins(
                &routed, chain, req, conn, request_id, trace,
            ))
            .await
        }
    }
}

/// Answers from the route's `respond`, or forwards upstream.
async fn dispatch(
    routed: &Routed<'_>,
    parts: http::request::Parts,
    body: Body,
    conn: ConnInfo,
    request_id: &HeaderValue,
    trace: &mut Trace,
) -> Result<Response<Body>, Rejection> {
    match &routed.route.action {
        Action::Respond(p) => Ok(respond(p, &parts.method)),
        Action::Upstream(u) => forward(u, routed, parts, body, conn, request_id, trace).await,
    }
}

async fn serve_with_plugins(
    routed: &Routed<'_>,
    chain: &Chain,
    req: Request<Body>,
    conn: ConnInfo,
    request_id: &HeaderValue,
    trace: &mut Trace,
) -> Result<Response<Body>, Rejection> {
    let max_body = routed.route.max_body;
    let (parts, incoming) = req.into_parts();
    let (body, stream) = if chain.needs_body() {
        match buffer(incoming, max_body, routed.body_idle).await? {
            Buffered::Whole(bytes) => (Some(bytes), None),
            Buffered::TooLarge(_) => return Err(Rejection::PayloadTooLarge),
        }
    } else {
        (None, Some(incoming))
    };
    let view = RequestView {
        parts,
        body,
        body_replaced: false,
        path_rewritten: false,
        client: conn.peer.ip(),
        tls: conn.tls,
    };
    // A request's plugin calls run on its worker's instances (0 outside a worker: tests, tools).
    let worker = crate::worker::current();
    let mut ctx = Context::new();
    if let Some(subject) = &conn.client_subject {
        ctx.set(CLIENT_SUBJECT_KEY.to_owned(), subject.to_string());
    }
    let (view, ctx, outcome, spent) = chain.on_request(view, ctx, request_id, worker).await;
    trace.plugins += spent;
    let (response, rest, ran) = match outcome {
        RequestOutcome::Failed(failure) => return Err(Rejection::Plugin(failure)),
        RequestOutcome::Respond { mut response, ran } => {
            // A plugin's error answer is a local reply: a gRPC client gets it as a gRPC error.
            let status = response.parts.status;
            if status.is_client_error() || status.is_server_error() {
                let message = status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase();
                response.parts.extensions.insert(LocalReply { message });
            }
            (response, None, ran)
        }
        RequestOutcome::Reject { rejection, ran } => {
            (rescue::plugin_rejection(rejection, request_id), None, ran)
        }
        RequestOutcome::Continue => {
            let body = match (view.body, stream) {
                (Some(bytes), _) => Body::full(bytes),
                (None, Some(incoming)) => incoming,
                (None, None) => Body::empty(),
            };
            let path_routed = Routed {
                route: routed.route,
                // A plugin's rewritten path is the upstream path as written.
                prefix_len: if view.path_rewritten {
                    0
                } else {
                    routed.prefix_len
                },
                host: routed.host.clone(),
                body_idle: routed.body_idle,
            };
            let response =
                dispatch(&path_routed, view.parts, body, conn, request_id, trace).await?;
            if !chain.has_response_phase() {
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let (buffered, rest) = if chain.needs_body() {
                match buffer(body, max_body, routed.body_idle).await {
                    Ok(Buffered::Whole(bytes)) => (Some(bytes), None),
                    Ok(Buffered::TooLarge(rest)) => (None, Some(rest)),
                    Err(_) => return Err(Rejection::UpstreamBody),
                }
            } else {
                (None, Some(body))
            };
            let view = ResponseView {
                parts,
                body: buffered,
                body_replaced: false,
            };
            (view, rest, chain.len())
        }
    };
    let (mut view, mut ctx, mut ran) = (response, ctx, ran);
    loop {
        let (result, spent);
        (view, ctx, result, spent) = chain.on_response(ran, view, ctx, request_id, worker).await;
        trace.plugins += spent;
        match result.map_err(Rejection::Plugin)? {
            ResponseOutcome::Done => break,
            // A refusal replaces the response; the plugins before the one that refused see it.
            ResponseOutcome::Reject {
                rejection,
                remaining,
            } => {
                view = rescue::plugin_rejection(rejection, request_id);
                ran = remaining;
            }
        }
    }
    let body = match (view.body, rest) {
        (Some(bytes), _) => Body::full(bytes),
        (None, Some(rest)) => rest,
        (None, None) => Body::empty(),
    };
    Ok(Response::from_parts(view.parts, body))
}

/// A body read into memory, or the part read so far chained with the rest when it is larger
/// than the limit.
enum Buffered {
    Whole(Bytes),
    TooLarge(Body),
}

/// Reads `body` into memory up to `limit` bytes; a pause longer than `idle` between two reads
/// ends it with a 408 (a client that trickles its body must not pin the buffer).
async fn buffer(mut body: Body, limit: usize, idle: Duration) -> Result<Buffered, Rejection> {
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        return Ok(Buffered::TooLarge(body));
    }
    let mut buf = BytesMut::with_capacity(usize::try_from(hint.lower()).unwrap_or(0));
    loop {
        let Ok(next) = tokio::time::timeout(idle, body.frame()).await else {
            return Err(Rejection::BodyTimeout);
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|_| Rejection::BadRequest("body stream failed"))?;
        let Ok(data) = frame.into_data() else {
            // Trailers are not kept by plugins that buffer bodies.
            continue;
        };
        if buf.len() + data.len() > limit {
            buf.extend_from_slice(&data);
            return Ok(Buffered::TooLarge(Body::prefixed(buf.freeze(), body)));
        }
        buf.extend_from_slice(&data);
    }
    Ok(Buffered::Whole(buf.freeze()))
}

async fn forward(
    upstream: &Upstream,
    routed: &Routed<'_>,
    mut parts: http::request::Parts,
    body: Body,
    conn: ConnInfo,
    request_id: &HeaderValue,
    trace: &mut Trace,
) -> Result<Response<Body>, Rejection> {
    let strip = if routed.route.strip_path {
        routed.prefix_len
    } else {
        0
    };
    let target = upstream.pick();
    trace.target = Some(target.authority.clone());
    let path_and_query = if strip > 0 {
        stripped(&parts.uri, strip)
    } else {
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    let absolute_form = parts.uri.authority().is_some() && parts.version != Version::HTTP_2;
    // An HTTP/1.1 `Upgrade` (WebSocket): the protocol to switch to goes to the target, and the
    // client's connection is kept to be joined with the target's after a 101.
    let upgrade = forward::upgrade_protocol(&parts)
        .and_then(|protocol| Some((protocol, parts.extensions.remove::<OnUpgrade>()?)));
    // Origin-form: the pool adds what HTTP/2 needs (scheme and authority).
    parts.uri = Uri::from(path_and_query);
    parts.version = Version::HTTP_11;

    let headers = &mut parts.headers;
    forward::strip_hop_by_hop(headers);
    if let Some((protocol, _)) = &upgrade {
        headers.insert(UPGRADE, protocol.clone());
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // The host the client asked for: RFC 9112 §3.2.2 makes an absolute-form target's authority
    // win over Host; HTTP/2 sends it as :authority. Without either (HTTP/1.0), the target's.
    let client_host = routed.host.as_ref();
    if !routed.route.preserve_host {
        headers.insert(HOST, upstream_host(&target.authority));
    } else if absolute_form || !headers.contains_key(HOST) {
        let value = client_host.cloned().unwrap_or_else(|| {
            HeaderValue::from_str(target.authority.as_str()).unwrap_or(HeaderValue::from_static(""))
        });
        headers.insert(HOST, value);
    }
    forward::add_forwarded(headers, conn.peer.ip(), conn.tls, client_host);
    headers.insert(REQUEST_ID, request_id.clone());

    // A gRPC call's own deadline, when shorter, bounds the wait as the upstream's `timeout` does.
    let timeout = forward::grpc_timeout(&parts.headers)
        .map_or(upstream.timeout, |deadline| deadline.min(upstream.timeout));
    let req = Request::from_parts(parts, body);
    let sent = Instant::now();
    let result = match &upgrade {
        None => tokio::time::timeout(timeout, target.pool.send(req)).await,
        Some(_) => tokio::time::timeout(timeout, Box::pin(target.pool.upgrade(req)))
            .await
            .map(|r| r.map(|response| (response, None))),
    };
    let (mut response, release) = match result {
        Err(_) => {
            target.metrics.count(UpstreamOutcome::Timeout);
            return Err(Rejection::Timeout {
                upstream: upstream.name.clone(),
                target: target.authority.to_string(),
                timeout,
            });
        }
        Ok(Err(SendError::Connect(source))) => {
            target.metrics.count(UpstreamOutcome::ConnectError);
            // A WebSocket handshake's own connection (HTTP/1.1 only) failing says less about
            // the target than a pooled one would; a client must not be able to eject it.
            if upgrade.is_none() {
                upstream.eject(target);
            }
            return Err(Rejection::Connect {
                upstream: upstream.name.clone(),
                target: target.authority.to_string(),
                source,
            });
        }
        Ok(Err(SendError::Request(source))) => {
            target.metrics.count(UpstreamOutcome::Error);
            return Err(Rejection::Upstream {
                upstream: upstream.name.clone(),
                target: target.authority.to_string(),
                source,
            });
        }
        Ok(Ok(response)) => response,
    };
    target.metrics.responded(sent.elapsed());
    upstream.restore(target);
    if let Some((_, client)) = upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let switched = hyper::upgrade::on(&mut response);
        let request_id = String::from_utf8_lossy(request_id.as_bytes()).into_owned();
        tunnel::spawn(
            client,
            switched,
            upstream.timeout,
            target.metrics.clone(),
            request_id,
        );
        // The 101 keeps `Upgrade` and `Connection: upgrade`: they are what it says.
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = response.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(
        parts,
        Body::watched(body, upstream.timeout, release),
    ))
}

/// `Host` for `preserve_host = false`: the target's address, without the default port.
fn upstream_host(target: &Authority) -> HeaderValue {
    let text = match target.port_u16() {
        Some(80) => target.host(),
        _ => target.as_str(),
    };
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static(""))
}

/// A 308 to the same URL over HTTPS (method and body kept): the request's host, the first TLS
/// listener's port unless it is 443, the path and query as received.
fn https_redirect(host: &str, port: Option<u16>, uri: &Uri) -> Response<Body> {
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let location = match port {
        Some(443) | None => format!("https://{host}{path}"),
        Some(port) => format!("https://{host}:{port}{path}"),
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// Whether a path has a `.` or `..` segment, plain or percent-encoded.
fn has_dot_segment(path: &str) -> bool {
    if !path.contains(['.', '%']) {
        return false;
    }
    path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot possibly written `%2e`/`%2E`; checked without allocating.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => rest = tail,
            _ => return false,
        }
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the `Host` header, parsed for
/// routing and as the header value to forward (for `Host`, the header's own bytes, not a copy).
fn request_host<B>(req: &Request<B>) -> Result<Option<(Authority, HeaderValue)>, Rejection> {
    if let Some(a) = req.uri().authority() {
        let value = HeaderValue::from_str(a.as_str())
            .map_err(|_| Rejection::BadRequest("invalid request target"))?;
        return Ok(Some((a.clone(), value)));
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
        .map(|a| Some((a, host.clone())))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dot_segments_plain_and_encoded() {
        for bad in ["/a/../b", "/..", "/a/.", "/a/%2E%2e/b", "/%2e/x"] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in ["/", "/a/b", "/a/..b", "/.well-known/x", "/a/b.c"] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }
}
