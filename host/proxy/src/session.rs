//! One request's way through the gateway, as phases over one value (pingora's `ProxyHttp`
//! model):
//!
//! ```text
//! Session::new ─▶ route ─▶ request plugins ─▶ upstream ─▶ response plugins ─▶ finish
//! ```
//!
//! Each phase reads and writes the [`Session`] and either hands the request on or ends it with a
//! response; a [`Rejection`] from any phase becomes the client's answer in [`Session::finish`],
//! the one place where data-path errors turn into HTTP responses, which also counts and logs
//! the request once its body has been sent.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use wasmgate_cache::{Lookup, Status, X_CACHE};
use wasmgate_compression::{Codec, CodecError};
use wasmgate_runtime::{
    Chain, Context, RequestOutcome, RequestView, ResponseOutcome, ResponseView,
};
use wasmgate_telemetry::UpstreamOutcome;

use crate::body::{Active, Body, BodyError, InFlight};
use crate::canonical;
use crate::forward::{self, REQUEST_ID};
use crate::framing;
use crate::pool::{ConnectError, SendError};
use crate::record::{Arrival, Record, Recorded, Trace};
use crate::rescue::{self, LocalReply, Rejection};
use crate::retry::Tape;
use crate::router::Match;
use crate::snapshot::{Action, Prepared, RouteRuntime, Snapshot};
use crate::spans::RequestSpan;
use crate::tunnel;
use crate::upstream::{Failure, Target, TargetSet, Upstream};

/// What a session knows about the connection a request came on.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    /// The subject of the client's verified certificate (`[gateway.tls] client_auth`).
    pub(crate) client_subject: Option<Arc<str>>,
    /// The worker serving the connection: its requests use the worker's upstream connections
    /// and plugin instances.
    pub(crate) worker: usize,
}

/// The context key under which plugins find the verified client certificate's subject.
pub(crate) const CLIENT_SUBJECT_KEY: &str = "tls.client_subject";

/// A request from its arrival until its response head is handed to the client.
pub(crate) struct Session<'s> {
    snapshot: &'s Snapshot,
    conn: &'s ConnInfo,
    start: Instant,
    request_id: HeaderValue,
    method: Method,
    /// Whether local replies take gRPC's form (gRPC runs over HTTP/2 only: an HTTP/1.1 client
    /// must not get an error as a 200).
    grpc: bool,
    /// Boxed: with the access log off it is not there, and the session is moved with every
    /// request.
    arrival: Option<Box<Arrival>>,
    trace: Trace,
    /// The route, once the route phase found it.
    route: Option<&'s RouteRuntime>,
    /// How much of the path the route's prefix matched (0 once a plugin rewrote the path).
    prefix_len: usize,
    /// The host the client asked for, as a header value: for `Host` on the upstream request when
    /// the client's target was absolute, and for `X-Forwarded-Host`.
    host: Option<HeaderValue>,
    /// The client's address: the peer's, or behind `trusted_proxies` the one they name.
    client: IpAddr,
    /// The request's server span, when `[gateway.tracing]` is on (boxed: the session is moved
    /// with every request, and is one word larger for it when tracing is off).
    span: Option<Box<RequestSpan>>,
    /// The client's `Accept-Encoding`, kept when the route compresses.
    accept_encoding: Vec<HeaderValue>,
}

/// How a client's WebSocket handshake reached the gateway.
enum Switch {
    /// HTTP/1.1 `Upgrade`, with the protocol asked for.
    Http1(HeaderValue),
    /// HTTP/2 extended CONNECT, sent on as HTTP/1.1 with this `Sec-WebSocket-Key`.
    H2WebSocket { key: String },
}

/// A request phase's way on: the request for the next phase, or the response that ends it.
type Step<T> = Result<ControlFlow<Response<Body>, T>, Rejection>;

impl<'s> Session<'s> {
    /// Starts a session for `req` on `snapshot` (in-flight requests finish on the snapshot they
    /// started with, whatever a reload swaps in), with its body counted when the access log is
    /// on.
    pub(crate) fn new(
        snapshot: &'s Snapshot,
        conn: &'s ConnInfo,
        req: Request<Incoming>,
    ) -> (Self, Request<Body>) {
        let start = Instant::now();
        let client = snapshot.trusted.client(conn.peer.ip(), req.headers());
        let span = snapshot.tracing.as_ref().map(|tracing| {
            Box::new(RequestSpan::start(
                tracing.tracer(),
                &req,
                conn.tls,
                conn.peer.ip(),
                client,
            ))
        });
        let mut session = Self {
            snapshot,
            conn,
            start,
            request_id: forward::request_id(req.headers()),
            method: req.method().clone(),
            grpc: req.version() == Version::HTTP_2 && rescue::is_grpc(req.headers()),
            arrival: None,
            trace: Trace::default(),
            route: None,
            prefix_len: 0,
            host: None,
            client,
            span,
            accept_encoding: Vec::new(),
        };
        // Counted (and limited) only when there is a body to count.
        let limit = snapshot.max_request_body;
        let limited = limit != u64::MAX && !http_body::Body::is_end_stream(req.body());
        if !snapshot.access_log.enabled() {
            return match limited {
                true => (session, req.map(|b| Body::counted(b, None, limit))),
                false => (session, req.map(Body::stream)),
            };
        }
        let bytes_in = Arc::new(AtomicU64::new(0));
        session.arrival = Some(Box::new(Arrival {
            time: SystemTime::now(),
            client: session.client,
            host: log_host(&req),
            path: req.uri().path().to_owned(),
            bytes_in: bytes_in.clone(),
            client_cert: conn.client_subject.clone(),
        }));
        (
            session,
            req.map(|b| Body::counted(b, Some(bytes_in), limit)),
        )
    }

    /// Runs the phases in order and finishes with what they answered.
    pub(crate) async fn run(mut self, req: Request<Body>) -> Response<Recorded> {
        let result = self.phases(req).await;
        let result = match (result, self.route.and_then(|r| r.compression.as_ref())) {
            // The gateway's own error answers are small and stay as they are.
            (Ok(response), Some(compression))
                if response.extensions().get::<LocalReply>().is_none() =>
            {
                let (response, codec) =
                    compression.respond(&self.accept_encoding, &self.method, response);
                self.trace.encoding = codec.map(Codec::token);
                Ok(response)
            }
            (result, _) => result,
        };
        self.finish(result)
    }

    async fn phases(&mut self, mut req: Request<Body>) -> Result<Response<Body>, Rejection> {
        if let ControlFlow::Break(answer) = self.route(&mut req)? {
            return Ok(answer);
        }
        // Both boxed: the upstream phase's future (4 KiB of pool send, the retries' state)
        // and the plugin calls' are large, and hyper moves every request's future into its
        // connection's slot: inline, they made it 13 KiB, copied once per request (with the
        // upstream phase boxed: 1.7 KiB).
        match self.route.and_then(|r| r.chain.as_deref()) {
            None => match self.answer_now(req) {
                ControlFlow::Break(answer) => Ok(answer),
                ControlFlow::Continue(req) => Box::pin(self.upstream(req)).await,
            },
            Some(chain) => Box::pin(self.with_plugins(chain, req)).await,
        }
    }

    /// The upstream phase's answer when it takes no waiting — the route's own response, a fresh
    /// cache hit — or the request back. Answered here, a request skips building and boxing the
    /// upstream phase's future (kilobytes, copied at least once).
    fn answer_now(&mut self, req: Request<Body>) -> ControlFlow<Response<Body>, Request<Body>> {
        let Some(route) = self.route else {
            return ControlFlow::Continue(req);
        };
        if let Action::Respond(p) = &route.action {
            return ControlFlow::Break(respond(p, req.method()));
        }
        // A split route chooses its upstream before the lookup (see `upstream`).
        let (Some(cache), Action::Upstream(_)) = (&route.cache, &route.action) else {
            return ControlFlow::Continue(req);
        };
        let (parts, body) = req.into_parts();
        match cache.fresh(&parts) {
            Some(hit) => {
                self.trace.cache = Some(Status::Hit.as_str());
                ControlFlow::Break(hit.map(Body::full))
            }
            None => ControlFlow::Continue(Request::from_parts(parts, body)),
        }
    }

    /// The request and response phases of the route's plugins around the upstream phase.
    async fn with_plugins(
        &mut self,
        chain: &Chain,
        req: Request<Body>,
    ) -> Result<Response<Body>, Rejection> {
        let mut ctx = Context::new();
        if self.span.as_ref().is_some_and(|span| span.is_recording()) {
            ctx.record_hooks();
        }
        if let Some(subject) = &self.conn.client_subject {
            ctx.set(CLIENT_SUBJECT_KEY.to_owned(), subject.to_string());
        }
        let (ctx, answered) = self.request_plugins(chain, req, ctx).await?;
        let (view, rest, ran) = match answered {
            ControlFlow::Break((view, ran)) => (view, None, ran),
            ControlFlow::Continue(req) => {
                let response = self.upstream(req).await?;
                if !chain.has_response_phase() {
                    return Ok(response);
                }
                let (view, rest) = self.response_view(chain, response).await?;
                (view, rest, chain.len())
            }
        };
        let view = self.response_plugins(chain, view, ctx, ran).await?;
        let body = match (view.body, rest) {
            (Some(bytes), _) => Body::full(bytes),
            (None, Some(rest)) => rest,
            (None, None) => Body::empty(),
        };
        Ok(Response::from_parts(view.parts, body))
    }

    /// Route phase: checks what every request must satisfy, finds the route and whether the
    /// request may use it on this connection.
    fn route(&mut self, req: &mut Request<Body>) -> Step<()> {
        let snapshot = self.snapshot;
        framing::check(req.version(), req.headers()).map_err(Rejection::Framing)?;
        // A declared Content-Length (HTTP/1.1 or HTTP/2), as hyper already parsed it.
        if req.body().size_hint().lower() > snapshot.max_request_body {
            return Err(Rejection::PayloadTooLarge);
        }
        if req.headers().len() > snapshot.max_headers {
            return Err(Rejection::HeadersTooLarge("too many header fields"));
        }
        // One form of the path for routing, plugins and the upstream alike (`*` and a CONNECT's
        // authority-form target have none).
        let (rewritten, routing) = if !req.uri().path().starts_with('/') {
            (None, None)
        } else {
            let c = canonical::canonical(req.uri().path(), snapshot.paths)
                .map_err(|refused| Rejection::BadRequest(refused.as_str()))?;
            let routing = (c.routing != c.path).then(|| c.routing.into_owned());
            let rewritten = match c.path {
                Cow::Owned(path) if path != req.uri().path() => Some(path),
                _ => None,
            };
            (rewritten, routing)
        };
        if let Some(path) = rewritten {
            *req.uri_mut() = with_path(req.uri(), &path)?;
        }
        let routing = routing.as_deref();
        let host = request_host(req)?;
        let routed_host = host.as_ref().map(|(a, _)| a.host().trim_end_matches('.'));
        let found = snapshot.router.route(
            routed_host,
            routing.unwrap_or(req.uri().path()),
            req.method(),
            req.headers(),
        );
        let (index, prefix_len) = match found {
            Match::Found { route, prefix_len } => match routing {
                // The matched prefix with its `;` parameters, for `strip_path`.
                Some(_) => (route, canonical::prefix_end(req.uri().path(), prefix_len)),
                None => (route, prefix_len),
            },
            Match::NotFound => return Err(Rejection::NoRoute),
            Match::MethodNotAllowed { route, methods } => {
                // Counted and logged under the route that matched all but the method.
                self.trace.route = Some(route);
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
        self.trace.route = Some(index);
        if let Some(span) = &self.span {
            span.routed(snapshot.route_metrics[index].name());
        }
        let route = &snapshot.routes[index];
        if !route.protocols.allows(self.conn.tls) {
            let host = host.as_ref().map(|(a, _)| a.host());
            return match (route.https_redirect, host) {
                (true, Some(host)) => Ok(ControlFlow::Break(https_redirect(
                    host,
                    snapshot.https_port,
                    req.uri(),
                ))),
                _ => Err(Rejection::HttpsRequired {
                    http1: req.version() < Version::HTTP_2,
                }),
            };
        }
        if route.compression.is_some() {
            self.accept_encoding = req
                .headers()
                .get_all(http::header::ACCEPT_ENCODING)
                .iter()
                .cloned()
                .collect();
        }
        self.route = Some(route);
        self.prefix_len = prefix_len;
        self.host = host.map(|(_, value)| value);
        Ok(ControlFlow::Continue(()))
    }

    /// Request phase of the plugins: the request to forward, or the answer of the plugin that
    /// ended it with how many plugins ran before it.
    async fn request_plugins(
        &mut self,
        chain: &Chain,
        req: Request<Body>,
        ctx: Context,
    ) -> Result<(Context, ControlFlow<(ResponseView, usize), Request<Body>>), Rejection> {
        let (mut parts, mut incoming) = req.into_parts();
        if chain.needs_body()
            && let Some(compression) = self.route.and_then(|r| r.compression.as_ref())
        {
            incoming = compression.request(&mut parts, incoming, self.max_body() as u64);
        }
        let (body, stream) = if chain.needs_body() {
            match buffer(incoming, self.max_body(), self.snapshot.body_idle).await? {
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
            client: self.client,
            tls: self.conn.tls,
        };
        let (view, mut ctx, outcome, spent) = chain
            .on_request(view, ctx, &self.request_id, self.conn.worker)
            .await;
        self.trace.plugins += spent;
        if let Some(span) = &self.span {
            span.hooks(ctx.take_hooks());
        }
        let answered = match outcome {
            RequestOutcome::Failed(failure) => return Err(Rejection::Plugin(failure)),
            RequestOutcome::Respond { mut response, ran } => {
                // A plugin's error answer is a local reply: a gRPC client gets it as a gRPC
                // error.
                let status = response.parts.status;
                if status.is_client_error() || status.is_server_error() {
                    let message = status
                        .canonical_reason()
                        .unwrap_or("error")
                        .to_ascii_lowercase();
                    response.parts.extensions.insert(LocalReply { message });
                }
                (response, ran)
            }
            RequestOutcome::Reject { rejection, ran } => {
                (rescue::plugin_rejection(rejection, &self.request_id), ran)
            }
            RequestOutcome::Continue => {
                if view.path_rewritten {
                    // A plugin's rewritten path is the upstream path as written.
                    self.prefix_len = 0;
                }
                let body = match (view.body, stream) {
                    (Some(bytes), _) => Body::full(bytes),
                    (None, Some(incoming)) => incoming,
                    (None, None) => Body::empty(),
                };
                return Ok((
                    ctx,
                    ControlFlow::Continue(Request::from_parts(view.parts, body)),
                ));
            }
        };
        Ok((ctx, ControlFlow::Break(answered)))
    }

    /// The upstream's response as plugins see it: its body read into memory when a plugin
    /// needs it and it fits, otherwise left to stream (the second value).
    async fn response_view(
        &self,
        chain: &Chain,
        response: Response<Body>,
    ) -> Result<(ResponseView, Option<Body>), Rejection> {
        let (parts, body) = response.into_parts();
        let (buffered, rest) = if chain.needs_body() {
            match buffer(body, self.max_body(), self.snapshot.body_idle).await {
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
        Ok((view, rest))
    }

    /// Response phase of the first `ran` plugins, in reverse order. A plugin's refusal replaces
    /// the response, and the plugins before it see the refusal.
    async fn response_plugins(
        &mut self,
        chain: &Chain,
        mut view: ResponseView,
        mut ctx: Context,
        mut ran: usize,
    ) -> Result<ResponseView, Rejection> {
        loop {
            let (result, spent);
            (view, ctx, result, spent) = chain
                .on_response(ran, view, ctx, &self.request_id, self.conn.worker)
                .await;
            self.trace.plugins += spent;
            if let Some(span) = &self.span {
                span.hooks(ctx.take_hooks());
            }
            match result.map_err(Rejection::Plugin)? {
                ResponseOutcome::Done => return Ok(view),
                ResponseOutcome::Reject {
                    rejection,
                    remaining,
                } => {
                    view = rescue::plugin_rejection(rejection, &self.request_id);
                    ran = remaining;
                }
            }
        }
    }

    /// Upstream phase: the route's own answer, or the upstream's response head with its body
    /// streaming behind it.
    async fn upstream(&mut self, req: Request<Body>) -> Result<Response<Body>, Rejection> {
        let route = self.route.ok_or(Rejection::NoRoute)?;
        let (upstream, req) = match &route.action {
            Action::Respond(p) => return Ok(respond(p, req.method())),
            Action::Upstream(upstream) => (upstream, req),
            Action::Split(split) => {
                let (parts, body) = req.into_parts();
                let upstream = split.choose(&parts, self.client);
                (upstream, Request::from_parts(parts, body))
            }
        };
        let Some(cache) = &route.cache else {
            return self.forward(route, upstream, req).await;
        };
        // After the request plugins (a request they refuse never sees the cache), before the
        // upstream.
        let (mut parts, body) = req.into_parts();
        // A split route's upstreams answer differently (that is the point): each has entries
        // of its own.
        let split = matches!(route.action, Action::Split(_));
        let lookup = cache
            .lookup(&parts, split.then_some(upstream.name.as_str()))
            .await;
        self.trace.cache = Some(match &lookup {
            Lookup::Hit(_) => Status::Hit.as_str(),
            Lookup::Miss(_) => Status::Miss.as_str(),
            Lookup::Bypass => Status::Bypass.as_str(),
        });
        match lookup {
            Lookup::Hit(response) => Ok(response.map(Body::full)),
            Lookup::Miss(mut fill) => {
                fill.revalidate(&mut parts.headers);
                let req = Request::from_parts(parts, body);
                let response = fill.record(self.forward(route, upstream, req).await?);
                if response.body().is_revalidated() {
                    cache.revalidated();
                    self.trace.cache = Some(Status::Revalidated.as_str());
                }
                Ok(response.map(Body::wrap))
            }
            Lookup::Bypass => {
                let req = Request::from_parts(parts, body);
                let mut response = self.forward(route, upstream, req).await?;
                response
                    .headers_mut()
                    .insert(X_CACHE, HeaderValue::from_static(Status::Bypass.as_str()));
                Ok(response)
            }
        }
    }

    /// Sends the request to one of the upstream's targets, and again by the upstream's
    /// `retries` when a try fails: a request whose connection could not be made (nothing was
    /// sent) whatever its method; one whose connection failed before any response arrived (a
    /// target that just died, a reset), or that timed out or got a retried status, when its
    /// method is retried and its body could be kept. With no `retries` table that is one retry
    /// on another target, as nginx's default `proxy_next_upstream error` does. The upstream's
    /// `timeout` bounds every try together.
    async fn forward(
        &mut self,
        route: &RouteRuntime,
        upstream: &Upstream,
        req: Request<Body>,
    ) -> Result<Response<Body>, Rejection> {
        // Circuit breaking: beyond `max_requests` in flight, a fast 503 rather than a queue.
        let mut admitted = upstream.admit().map_err(|max| Rejection::Overloaded {
            upstream: upstream.name.clone(),
            reason: format!("{max} requests in flight already (max_requests)"),
        })?;
        let (mut parts, body) = req.into_parts();
        // Chosen on the request as the client sent it (and the plugins left it).
        let set = upstream.targets();
        let mut index = upstream.pick(&set, &parts, self.client);
        let target = &set.targets[index];
        let path_and_query = if route.strip_path && self.prefix_len > 0 {
            stripped(&parts.uri, self.prefix_len)
        } else {
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        };
        let absolute_form = parts.uri.authority().is_some() && parts.version != Version::HTTP_2;
        // A WebSocket: an HTTP/1.1 `Upgrade`, or over HTTP/2 an extended CONNECT (RFC 8441),
        // which goes to the target as HTTP/1.1's handshake with a key of the gateway's own. The
        // client's side is kept to be joined with the target's after its 101.
        let upgrade = if let Some(protocol) = forward::upgrade_protocol(&parts) {
            Some(Switch::Http1(protocol))
        } else if forward::is_h2_websocket(&parts) {
            parts.method = Method::GET;
            Some(Switch::H2WebSocket {
                key: tungstenite::handshake::client::generate_key(),
            })
        } else {
            None
        }
        .and_then(|switch| Some((switch, parts.extensions.remove::<OnUpgrade>()?)));
        // Origin-form: the pool adds what HTTP/2 needs (scheme and authority).
        parts.uri = Uri::from(path_and_query);
        parts.version = Version::HTTP_11;

        let headers = &mut parts.headers;
        forward::strip_hop_by_hop(headers);
        match &upgrade {
            Some((Switch::Http1(protocol), _)) => {
                headers.insert(UPGRADE, protocol.clone());
                headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            }
            Some((Switch::H2WebSocket { key }, _)) => {
                headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
                if let Ok(key) = HeaderValue::from_str(key) {
                    headers.insert(SEC_WEBSOCKET_KEY, key);
                }
                headers
                    .entry(SEC_WEBSOCKET_VERSION)
                    .or_insert(HeaderValue::from_static("13"));
            }
            None => {}
        }
        // The host the client asked for: RFC 9112 §3.2.2 makes an absolute-form target's
        // authority win over Host; HTTP/2 sends it as :authority. Without either (HTTP/1.0), the
        // target's (set per target below).
        let client_host = self.host.as_ref();
        if route.preserve_host
            && (absolute_form || !headers.contains_key(HOST))
            && let Some(host) = client_host
        {
            headers.insert(HOST, host.clone());
        }
        forward::add_forwarded(headers, self.conn.peer.ip(), self.conn.tls, client_host);
        headers.insert(REQUEST_ID, self.request_id.clone());
        let body = match (&route.mirror, &upgrade) {
            (Some(mirror), None) => mirror.copy(
                &parts,
                body,
                route.preserve_host,
                self.client,
                self.conn.worker,
            ),
            _ => body,
        };

        // A gRPC call's own deadline, when shorter, bounds the wait as the upstream's `timeout`
        // does.
        let timeout = forward::grpc_timeout(&parts.headers)
            .map_or(upstream.timeout, |deadline| deadline.min(upstream.timeout));
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some((switch, client)) = upgrade {
            set_target_host(&mut parts.headers, route, target);
            self.trace.target = Some(target.authority.clone());
            let req = Request::from_parts(parts, body);
            let sent = Instant::now();
            let response =
                match tokio::time::timeout_at(deadline, Box::pin(target.pool.upgrade(req))).await {
                    Ok(Ok(response)) => response,
                    // A WebSocket handshake's own connection (HTTP/1.1 only) failing says less
                    // about the target than a pooled one would; a client must not be able to
                    // eject it.
                    Ok(Err(failed)) => {
                        count_failure(target, &failed);
                        return Err(rejection(upstream, target, failed));
                    }
                    Err(_) => return Err(timed_out(upstream, target, timeout)),
                };
            target.metrics.responded(sent.elapsed());
            return self.switch(upstream, target, response, switch, client);
        }
        // What a retry needs when the request is gone (sent on a connection that then failed,
        // or answered with a retried status): kept only when sending it again is harmless.
        let policy = &upstream.retries;
        let bodiless = body.is_end_stream();
        let (tape, body) =
            if policy.replays(&parts.method) && !bodiless && policy.keeps(&body.size_hint()) {
                let tape = Tape::new(body, policy.max_body());
                let body = tape.play().unwrap_or_else(Body::empty);
                (Some(tape), body)
            } else {
                (None, body)
            };
        let replay = (policy.replays(&parts.method) && (tape.is_some() || bodiless))
            .then(|| replayable(&parts));
        let again = |replay: &Option<http::request::Parts>| {
            let head = replay.clone()?;
            let body = match &tape {
                Some(tape) => tape.play()?,
                None => Body::empty(),
            };
            Some(Request::from_parts(head, body))
        };
        let mut req = Request::from_parts(parts, body);
        let mut tried = Vec::new();
        let mut retry = 0;
        // This request's place in the retry budget while a retry of it is in flight: until the
        // retry's response has ended (it goes into the body) or the retry failed.
        let mut retrying: Option<InFlight> = None;
        loop {
            let target = &set.targets[index];
            set_target_host(req.headers_mut(), route, target);
            self.trace.target = Some(target.authority.clone());
            let mut span = self
                .span
                .as_ref()
                // Boxed: 288 bytes that every try's future would carry, tracing on or off.
                .map(|span| Box::new(span.upstream(&mut req, &upstream.name, target, retry)));
            let sent = Instant::now();
            let worker = self.conn.worker;
            let active = target.begin();
            let try_deadline = policy
                .per_try_timeout
                .map_or(deadline, |t| deadline.min(tokio::time::Instant::now() + t));
            let mut retries = Retries {
                upstream,
                set: &set,
                tried: &mut tried,
                index,
                retry,
                deadline,
                last: retry >= policy.attempts,
                retrying: &mut retrying,
            };
            // What failed, the request to send again, and the plan for it.
            let (failure, next, plan) = match tokio::time::timeout_at(
                try_deadline,
                target.pool.send(req, worker),
            )
            .await
            {
                Ok(Ok((response, release))) => {
                    target.metrics.responded(sent.elapsed());
                    let status = response.status();
                    if let Some(span) = &mut span {
                        span.responded(status);
                    }
                    if status.is_server_error() {
                        upstream.failed(&set, target, Failure::ServerError);
                    } else {
                        upstream.succeeded(target);
                    }
                    let retried = if policy.retries_status(status)
                        && let Ok(after) = policy.retry_after(response.headers())
                        && let Some(next) = again(&replay)
                        && let Some(plan) = retries.plan(false, after)
                    {
                        Some((next, plan))
                    } else {
                        None
                    };
                    let Some((next, plan)) = retried else {
                        let (mut parts, body) = response.into_parts();
                        forward::strip_hop_by_hop(&mut parts.headers);
                        return Ok(Response::from_parts(
                            parts,
                            Body::watched(
                                body,
                                upstream.timeout,
                                release,
                                Some(Active {
                                    target: active,
                                    upstream: admitted.take(),
                                    retry: retrying.take(),
                                }),
                            ),
                        ));
                    };
                    // Its body is not read: its connection closes.
                    drop(response);
                    (format!("status {status}"), next, plan)
                }
                // The gateway's own limit, not the target's failure: neither counted
                // against it nor retried.
                Ok(Err(SendError::Connect {
                    source: source @ ConnectError::Overloaded(..),
                    ..
                })) => {
                    if let Some(span) = &mut span {
                        span.failed("overloaded", &source);
                    }
                    return Err(Rejection::Overloaded {
                        upstream: upstream.name.clone(),
                        reason: source.to_string(),
                    });
                }
                // The client's body broke off or was malformed while it was sent: the
                // client's fault, not the target's; what follows on its connection cannot
                // be trusted either.
                Ok(Err(failed)) if client_body_failed(&failed).is_some() => {
                    tracing::debug!(request_id = ?self.request_id, error = %failed, "request body failed");
                    if let Some(span) = &mut span {
                        span.failed("request_body", &failed);
                    }
                    return Err(match client_body_failed(&failed) {
                        Some(BodyError::TooLarge(_)) => Rejection::PayloadTooLarge,
                        _ => Rejection::Framing("malformed request body"),
                    });
                }
                Ok(Err(mut failed)) => {
                    count_failure(target, &failed);
                    if let Some(span) = &mut span {
                        let kind = match failed {
                            SendError::Connect { .. } => "connect",
                            SendError::Request(_) => "request",
                        };
                        span.failed(kind, &failed);
                    }
                    if matches!(failed, SendError::Connect { .. }) {
                        upstream.failed(&set, target, Failure::Error);
                    }
                    let next = match &mut failed {
                        SendError::Connect { unsent, .. } => unsent.take().map(|req| *req),
                        SendError::Request(e) if lost_before_response(e) => again(&replay),
                        SendError::Request(_) => None,
                    };
                    let error = failed.to_string();
                    match next.zip(retries.plan(true, None)) {
                        Some((next, plan)) => (error, next, plan),
                        None => return Err(rejection(upstream, target, failed)),
                    }
                }
                Err(_) => {
                    upstream.failed(&set, target, Failure::Error);
                    if let Some(span) = &mut span {
                        span.failed("timeout", "no response in time");
                    }
                    // The upstream's `timeout` bounds every try together: once it is
                    // over, so is the request.
                    let planned = (try_deadline < deadline)
                        .then(|| again(&replay).zip(retries.plan(false, None)))
                        .flatten();
                    let waited = policy
                        .per_try_timeout
                        .filter(|_| try_deadline < deadline)
                        .unwrap_or(timeout);
                    match planned {
                        Some((next, plan)) => {
                            (format!("no response within {waited:?}"), next, plan)
                        }
                        None => return Err(timed_out(upstream, target, waited)),
                    }
                }
            };
            tracing::debug!(
                request_id = ?self.request_id,
                upstream = %upstream.name,
                target = %target.authority,
                error = %failure,
                next = %set.targets[plan.index].authority,
                wait = ?plan.wait,
                "retrying"
            );
            target.metrics.retried();
            // The try's span ends before the backoff.
            drop(span);
            if !plan.wait.is_zero() {
                tokio::time::sleep(plan.wait).await;
            }
            retry += 1;
            index = plan.index;
            req = next;
        }
    }

    /// Joins the client's connection with the target's after the target switched protocols
    /// (a 101; to an HTTP/2 client, which has no 101, a 200), or hands back its refusal.
    fn switch(
        &self,
        upstream: &Upstream,
        target: &Target,
        mut response: Response<Incoming>,
        switch: Switch,
        client: OnUpgrade,
    ) -> Result<Response<Body>, Rejection> {
        upstream.succeeded(target);
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = response.into_parts();
            forward::strip_hop_by_hop(&mut parts.headers);
            return Ok(Response::from_parts(
                parts,
                Body::watched(body, upstream.timeout, None, None),
            ));
        }
        if let Switch::H2WebSocket { key } = &switch {
            let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let accept = response.headers().get(SEC_WEBSOCKET_ACCEPT);
            if accept.is_none_or(|a| a.as_bytes() != expected.as_bytes()) {
                return Err(Rejection::WebSocketAccept {
                    upstream: upstream.name.clone(),
                    target: target.authority.to_string(),
                });
            }
        }
        let switched = hyper::upgrade::on(&mut response);
        let request_id = String::from_utf8_lossy(self.request_id.as_bytes()).into_owned();
        tunnel::spawn(
            client,
            switched,
            upstream.timeout,
            target.metrics.clone(),
            request_id,
        );
        let (mut parts, _) = response.into_parts();
        if let Switch::H2WebSocket { .. } = switch {
            // RFC 8441 §5: a 2xx accepts the CONNECT; the handshake's HTTP/1.1 fields (and the
            // accept key, which answers the gateway's key, not the client's) stay behind.
            parts.status = StatusCode::OK;
            forward::strip_hop_by_hop(&mut parts.headers);
            parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
        }
        // A 101 keeps `Upgrade` and `Connection: upgrade`: they are what it says.
        Ok(Response::from_parts(parts, Body::empty()))
    }

    /// Log phase: turns a rejection into its response (the only place on the data path that
    /// does), stamps the request id, and attaches the record that counts and logs the request
    /// once the response body has been sent.
    fn finish(self, result: Result<Response<Body>, Rejection>) -> Response<Recorded> {
        let response = match result {
            Ok(response) if self.grpc && response.extensions().get::<LocalReply>().is_some() => {
                rescue::grpc_local_reply(response, &self.request_id)
            }
            Ok(mut response) => {
                response
                    .headers_mut()
                    .insert(REQUEST_ID, self.request_id.clone());
                if self.method == Method::HEAD {
                    // A plugin's answer to a HEAD request keeps its headers, not its body.
                    *response.body_mut() = Body::empty();
                }
                response
            }
            Err(rejection) if self.grpc => rejection.into_grpc_response(&self.request_id),
            Err(rejection) => rejection.into_response(&self.request_id, &self.method),
        };
        let snapshot = self.snapshot;
        let route = self
            .trace
            .route
            .map_or(&snapshot.unrouted, |i| &snapshot.route_metrics[i])
            .clone();
        let (parts, body) = response.into_parts();
        let record = Record {
            start: self.start,
            method: self.method,
            status: parts.status.as_u16(),
            request_id: self.request_id,
            route,
            trace: self.trace,
            arrival: self.arrival,
            log: snapshot.access_log.clone(),
            span: self.span,
        };
        Response::from_parts(parts, Recorded::new(body, record))
    }

    fn max_body(&self) -> usize {
        self.route.map_or(0, |r| r.max_body)
    }
}

/// What deciding on a retry needs to know of the tries so far.
struct Retries<'a> {
    upstream: &'a Upstream,
    set: &'a TargetSet,
    /// The targets tried before this try.
    tried: &'a mut Vec<usize>,
    /// This try's target.
    index: usize,
    /// Retries made so far.
    retry: u32,
    deadline: tokio::time::Instant,
    /// Whether this try was the last the upstream's `retries.attempts` allow.
    last: bool,
    /// The request's place in the retry budget, held while this try is a retry.
    retrying: &'a mut Option<InFlight>,
}

/// A retry decided on: its target, and how long to wait first.
struct Plan {
    index: usize,
    wait: Duration,
}

impl Retries<'_> {
    /// Plans the next try, or `None` when there is none: attempts used up, the retry budget
    /// spent, or no time left for it. A try whose connection failed is retried at once on a
    /// target not tried yet; otherwise (the same target again, a retried status or timeout)
    /// the retry waits, as the target's `Retry-After` asked or by the jittered backoff.
    fn plan(&mut self, connection_failed: bool, retry_after: Option<Duration>) -> Option<Plan> {
        if self.last {
            return None;
        }
        let policy = &self.upstream.retries;
        let first_retry = self.retrying.is_none();
        if !policy.admit(self.upstream.active_requests(self.set), self.retrying) {
            tracing::debug!(upstream = %self.upstream.name, "not retried: the retry budget is spent");
            return None;
        }
        self.tried.push(self.index);
        let index = self.upstream.pick_retry(self.set, self.tried);
        let fresh = !self.tried.contains(&index);
        let wait = retry_after.unwrap_or_else(|| {
            if connection_failed && fresh {
                Duration::ZERO
            } else {
                policy.backoff(self.retry + 1)
            }
        });
        if tokio::time::Instant::now() + wait >= self.deadline {
            // No retry after all: a place just taken goes back, while one held stays with the
            // retry whose answer goes to the client.
            if first_retry {
                *self.retrying = None;
            }
            return None;
        }
        Some(Plan { index, wait })
    }
}

fn timed_out(upstream: &Upstream, target: &Target, timeout: Duration) -> Rejection {
    target.metrics.count(UpstreamOutcome::Timeout);
    Rejection::Timeout {
        upstream: upstream.name.clone(),
        target: target.authority.to_string(),
        timeout,
    }
}

fn rejection(upstream: &Upstream, target: &Target, failed: SendError) -> Rejection {
    let (upstream, target) = (upstream.name.clone(), target.authority.to_string());
    match failed {
        SendError::Connect { source, .. } => Rejection::Connect {
            upstream,
            target,
            source,
        },
        SendError::Request(source) => Rejection::Upstream {
            upstream,
            target,
            source,
        },
    }
}

/// The client's body error a try failed with, if it did (reading it from the client failed:
/// malformed chunked framing, a connection that closed mid-body, more than
/// `max_request_body`).
fn client_body_failed(failed: &SendError) -> Option<&BodyError> {
    let SendError::Request(e) = failed else {
        return None;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(body @ (BodyError::Stream(_) | BodyError::TooLarge(_))) =
            c.downcast_ref::<BodyError>()
        {
            return Some(body);
        }
        cause = c.source();
    }
    None
}

fn count_failure(target: &Target, failed: &SendError) {
    target.metrics.count(match failed {
        SendError::Connect { .. } => UpstreamOutcome::ConnectError,
        SendError::Request(_) => UpstreamOutcome::Error,
    });
}

/// `Host` for the target when the route does not preserve the client's, or the client sent none
/// (HTTP/1.0).
fn set_target_host(headers: &mut http::HeaderMap, route: &RouteRuntime, target: &Target) {
    if !route.preserve_host || !headers.contains_key(HOST) {
        headers.insert(HOST, target.host.clone());
    }
}

/// A copy of a request's head, to send again.
fn replayable(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    copy.into_parts().0
}

/// Whether a connection failed before the response head arrived in a way that says nothing
/// about the request itself: closed, reset or refused. A malformed response, or a request the
/// client side could not send, is not repeated.
fn lost_before_response(e: &hyper::Error) -> bool {
    !(e.is_parse() || e.is_parse_status() || e.is_user())
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
        let frame = frame.map_err(|e| match e {
            BodyError::TooLarge(_) | BodyError::Codec(CodecError::TooLarge(_)) => {
                Rejection::PayloadTooLarge
            }
            BodyError::Codec(CodecError::Io { .. }) => {
                Rejection::BadRequest("malformed compressed request body")
            }
            _ => Rejection::BadRequest("body stream failed"),
        })?;
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

/// `uri` with its path replaced by `path` (the query kept).
fn with_path(uri: &Uri, path: &str) -> Result<Uri, Rejection> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(path_and_query)
            .map_err(|_| Rejection::BadRequest("invalid request target"))?,
    );
    Uri::from_parts(parts).map_err(|_| Rejection::BadRequest("invalid request target"))
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
