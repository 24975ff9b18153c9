//! A route's plugin chain: the request phase in route order, the response phase in reverse.
//!
//! At each plugin's turn the host first applies what needs no call: its fixed edits, and on the
//! way back the response edits its request hook scheduled. Only then is the plugin called, and
//! only for the hooks it asked for; a plugin made only of fixed edits is never called.
//!
//! * An answer (`respond` or `reject`) in the request phase skips the rest of the request phase
//!   and the upstream; the response phase then runs for the plugins that already saw the request
//!   (those before the one that answered), in reverse order. So a CORS plugin placed before an
//!   auth plugin still decorates the auth plugin's 401.
//! * An answer in the response phase replaces the response; the plugins before it in route order
//!   still see the replacement.
//! * A failure with `on_error = "deny"` ends the request with a 5xx made by the proxy; the
//!   response phase does not run. With `on_error = "allow"` the plugin is skipped for this
//!   request (and the failure counted and logged).
//!
//! The clock is read once when a phase starts and once after each call: every call's duration
//! (for `wasmgate_plugin_duration_seconds`) and the phase's total come from those readings.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use wasmgate_config::OnError;

use crate::PluginRejection;
use crate::binding::{Binding, Described, Failure, FailureKind};
use crate::exchange::{
    self, Context, HookCall, RequestView, ResponseView, request_inputs, response_inputs,
};
use crate::invoke::{Decision, RequestVerdict, ResponseVerdict};

/// How the request phase ended.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Every plugin let the request continue.
    Continue,
    /// A plugin answered; run the response phase for the first `ran` plugins on this response.
    Respond {
        /// The answer.
        response: ResponseView,
        /// How many plugins saw the request before the answer.
        ran: usize,
    },
    /// A plugin refused the request; render the refusal, then run the response phase for the
    /// first `ran` plugins on it.
    Reject {
        /// The refusal.
        rejection: PluginRejection,
        /// How many plugins saw the request before the refusal.
        ran: usize,
    },
    /// A plugin failed with `on_error = "deny"`.
    Failed(Failure),
}

/// How (a stretch of) the response phase ended.
#[derive(Debug)]
pub enum ResponseOutcome {
    /// Every plugin let the response continue.
    Done,
    /// A plugin replaced the response with a refusal; render it, then go on with the response
    /// phase of the first `remaining` plugins.
    Reject {
        /// The refusal.
        rejection: PluginRejection,
        /// The plugins still to run, before the one that refused.
        remaining: usize,
    },
}

/// One plugin of a chain, as the chain uses it: [`Binding`] in the gateway, fakes in tests.
pub(crate) trait Filter {
    fn described(&self) -> &Described;
    fn on_error(&self) -> OnError;
    fn failure(&self, kind: FailureKind, detail: String) -> Failure;
    fn observe(&self, response: bool, elapsed: Duration);
    fn plugin(&self) -> &Arc<str>;
    fn on_request(
        &self,
        view: RequestView,
        ctx: Context,
        inputs: Vec<Option<String>>,
        request_id: &HeaderValue,
        worker: usize,
    ) -> impl Future<Output = (RequestView, Context, Result<RequestVerdict, Failure>)>;
    fn on_response(
        &self,
        view: ResponseView,
        ctx: Context,
        inputs: Vec<Option<String>>,
        request_id: &HeaderValue,
        worker: usize,
    ) -> impl Future<Output = (ResponseView, Context, Result<ResponseVerdict, Failure>)>;
}

impl Filter for Binding {
    fn described(&self) -> &Described {
        &self.described
    }

    fn on_error(&self) -> OnError {
        self.on_error
    }

    fn failure(&self, kind: FailureKind, detail: String) -> Failure {
        Binding::failure(self, kind, detail)
    }

    fn observe(&self, response: bool, elapsed: Duration) {
        Binding::observe(self, response, elapsed);
    }

    fn plugin(&self) -> &Arc<str> {
        &self.tags.plugin
    }

    fn on_request(
        &self,
        view: RequestView,
        ctx: Context,
        inputs: Vec<Option<String>>,
        request_id: &HeaderValue,
        worker: usize,
    ) -> impl Future<Output = (RequestView, Context, Result<RequestVerdict, Failure>)> {
        Binding::on_request(self, view, ctx, inputs, request_id, worker)
    }

    fn on_response(
        &self,
        view: ResponseView,
        ctx: Context,
        inputs: Vec<Option<String>>,
        request_id: &HeaderValue,
        worker: usize,
    ) -> impl Future<Output = (ResponseView, Context, Result<ResponseVerdict, Failure>)> {
        Binding::on_response(self, view, ctx, inputs, request_id, worker)
    }
}

/// The plugin chain of one route.
#[derive(Debug)]
pub struct Chain<F = Binding> {
    filters: Vec<Arc<F>>,
    needs_body: bool,
    response_phase: bool,
}

#[expect(
    private_bounds,
    reason = "`Filter` is sealed: outside this crate only `Chain<Binding>` exists; the unit tests use fakes"
)]
impl<F: Filter> Chain<F> {
    pub(crate) fn new(filters: Vec<Arc<F>>) -> Self {
        let needs_body = filters.iter().any(|f| f.described().needs_body);
        // A request hook may schedule response edits, so it needs the response phase too (which
        // costs nothing but a look when none were scheduled).
        let response_phase = filters.iter().any(|f| {
            let d = f.described();
            d.hooks.request || d.hooks.response || !d.fixed_response.is_empty()
        });
        Self {
            filters,
            needs_body,
            response_phase,
        }
    }

    /// Whether any plugin of the chain needs buffered bodies.
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// Whether the response phase has anything to do.
    pub fn has_response_phase(&self) -> bool {
        self.response_phase
    }

    /// Number of plugins in the chain.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs the request phase on `worker`'s instances. The view and context come back edited,
    /// with how it ended and the time spent in it.
    pub async fn on_request(
        &self,
        mut view: RequestView,
        mut ctx: Context,
        request_id: &HeaderValue,
        worker: usize,
    ) -> (RequestView, Context, RequestOutcome, Duration) {
        let start = Instant::now();
        let mut last = start;
        for (i, filter) in self.filters.iter().enumerate() {
            let described = filter.described();
            if let Err(detail) = exchange::apply(&mut view.parts.headers, &described.fixed_request)
            {
                let failure = filter.failure(FailureKind::Error, detail);
                if !tolerated(filter.as_ref(), &failure, request_id) {
                    return (view, ctx, RequestOutcome::Failed(failure), start.elapsed());
                }
                continue;
            }
            if !described.hooks.request {
                continue;
            }
            let inputs = request_inputs(&described.request_inputs, &view, &ctx);
            let result;
            (view, ctx, result) = filter
                .on_request(view, ctx, inputs, request_id, worker)
                .await;
            let now = Instant::now();
            filter.observe(false, now - last);
            record(&mut ctx, filter.as_ref(), false, (last, now), || {
                outcome(result.as_ref().map(|v| &v.decision))
            });
            last = now;
            let verdict = match result {
                Ok(verdict) => verdict,
                Err(failure) => {
                    if !tolerated(filter.as_ref(), &failure, request_id) {
                        return (view, ctx, RequestOutcome::Failed(failure), last - start);
                    }
                    continue;
                }
            };
            ctx.write(verdict.context_writes);
            match verdict.decision {
                Decision::Continue => {}
                Decision::Respond(response) => {
                    return (
                        view,
                        ctx,
                        RequestOutcome::Respond { response, ran: i },
                        last - start,
                    );
                }
                Decision::Reject(rejection) => {
                    return (
                        view,
                        ctx,
                        RequestOutcome::Reject { rejection, ran: i },
                        last - start,
                    );
                }
            }
            if let Err(detail) = exchange::apply(&mut view.parts.headers, &verdict.request_edits) {
                let failure = filter.failure(FailureKind::Error, detail);
                if !tolerated(filter.as_ref(), &failure, request_id) {
                    return (view, ctx, RequestOutcome::Failed(failure), last - start);
                }
                continue;
            }
            if !verdict.response_edits.is_empty() {
                ctx.scheduled.push((i, verdict.response_edits));
            }
        }
        (view, ctx, RequestOutcome::Continue, last - start)
    }

    /// Runs the response phase over the first `ran` plugins (all of them when the request
    /// reached the upstream), in reverse order, on `worker`'s instances. It stops at a refusal,
    /// which the caller renders and hands back with the `remaining` plugins.
    pub async fn on_response(
        &self,
        ran: usize,
        mut view: ResponseView,
        mut ctx: Context,
        request_id: &HeaderValue,
        worker: usize,
    ) -> (
        ResponseView,
        Context,
        Result<ResponseOutcome, Failure>,
        Duration,
    ) {
        let start = Instant::now();
        let mut last = start;
        let ran = ran.min(self.filters.len());
        for (i, filter) in self.filters[..ran].iter().enumerate().rev() {
            let described = filter.described();
            let scheduled = ctx.take_scheduled(i);
            let host_edits = exchange::apply(&mut view.parts.headers, &described.fixed_response)
                .and_then(|()| match &scheduled {
                    Some(edits) => exchange::apply(&mut view.parts.headers, edits),
                    None => Ok(()),
                });
            if let Err(detail) = host_edits {
                let failure = filter.failure(FailureKind::Error, detail);
                if !tolerated(filter.as_ref(), &failure, request_id) {
                    return (view, ctx, Err(failure), last - start);
                }
                continue;
            }
            if !described.hooks.response {
                continue;
            }
            let inputs = response_inputs(&described.response_inputs, &view, &ctx);
            let result;
            (view, ctx, result) = filter
                .on_response(view, ctx, inputs, request_id, worker)
                .await;
            let now = Instant::now();
            filter.observe(true, now - last);
            record(&mut ctx, filter.as_ref(), true, (last, now), || {
                outcome(result.as_ref().map(|v| &v.decision))
            });
            last = now;
            let verdict = match result {
                Ok(verdict) => verdict,
                Err(failure) => {
                    if !tolerated(filter.as_ref(), &failure, request_id) {
                        return (view, ctx, Err(failure), last - start);
                    }
                    continue;
                }
            };
            ctx.write(verdict.context_writes);
            match verdict.decision {
                Decision::Continue => {
                    if let Err(detail) =
                        exchange::apply(&mut view.parts.headers, &verdict.response_edits)
                    {
                        let failure = filter.failure(FailureKind::Error, detail);
                        if !tolerated(filter.as_ref(), &failure, request_id) {
                            return (view, ctx, Err(failure), last - start);
                        }
                    }
                }
                Decision::Respond(replacement) => view = replacement,
                Decision::Reject(rejection) => {
                    let outcome = ResponseOutcome::Reject {
                        rejection,
                        remaining: i,
                    };
                    return (view, ctx, Ok(outcome), last - start);
                }
            }
        }
        (view, ctx, Ok(ResponseOutcome::Done), last - start)
    }
}

impl Chain {
    /// The chain's bindings, in route order.
    pub fn bindings(&self) -> &[Arc<Binding>] {
        &self.filters
    }
}

/// Adds a hook call to the context's record, when it keeps one (tracing is on).
fn record(
    ctx: &mut Context,
    filter: &impl Filter,
    response: bool,
    (started, ended): (Instant, Instant),
    outcome: impl FnOnce() -> &'static str,
) {
    if let Some(hooks) = &mut ctx.hooks {
        hooks.push(HookCall {
            plugin: filter.plugin().clone(),
            response,
            started,
            elapsed: ended - started,
            outcome: outcome(),
        });
    }
}

fn outcome(result: Result<&Decision, &Failure>) -> &'static str {
    match result {
        Ok(Decision::Continue) => "continue",
        Ok(Decision::Respond(_)) => "respond",
        Ok(Decision::Reject(_)) => "reject",
        Err(failure) => failure.kind.as_str(),
    }
}

/// Whether the chain goes on after `failure`: with `on_error = "allow"` (logged at `warn`), not
/// with `"deny"` (logged at `error`). The detail goes to the log only.
fn tolerated<F: Filter>(filter: &F, failure: &Failure, request_id: &HeaderValue) -> bool {
    let request_id = request_id.to_str().unwrap_or("");
    match filter.on_error() {
        OnError::Allow => {
            tracing::warn!(
                route = &*failure.route,
                plugin = &*failure.plugin,
                kind = failure.kind.as_str(),
                request_id,
                detail = %failure.detail,
                "plugin failed; skipped (on_error = \"allow\")"
            );
            true
        }
        OnError::Deny => {
            tracing::error!(
                route = &*failure.route,
                plugin = &*failure.plugin,
                kind = failure.kind.as_str(),
                request_id,
                detail = %failure.detail,
                "plugin failed"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http::{HeaderMap, StatusCode};

    use super::*;
    use crate::binding::Hooks;
    use crate::exchange::{Edit, Input};

    /// A scripted plugin: records its calls in a shared log and answers as told.
    struct Fake {
        name: &'static str,
        plugin: Arc<str>,
        described: Described,
        on_error: OnError,
        log: Arc<Mutex<Vec<String>>>,
        request: fn(&RequestView, &[Option<String>]) -> Result<RequestVerdict, String>,
        response: fn(&ResponseView) -> Result<ResponseVerdict, String>,
    }

    fn described(request: bool, response: bool) -> Described {
        Described {
            hooks: Hooks { request, response },
            needs_body: false,
            name: String::new(),
            version: String::new(),
            request_inputs: Vec::new(),
            response_inputs: Vec::new(),
            fixed_request: Vec::new(),
            fixed_response: Vec::new(),
        }
    }

    fn go_on() -> RequestVerdict {
        RequestVerdict {
            decision: Decision::Continue,
            request_edits: Vec::new(),
            response_edits: Vec::new(),
            context_writes: Vec::new(),
        }
    }

    fn pass() -> ResponseVerdict {
        ResponseVerdict {
            decision: Decision::Continue,
            response_edits: Vec::new(),
            context_writes: Vec::new(),
        }
    }

    fn reject(status: u16) -> PluginRejection {
        PluginRejection {
            status: StatusCode::from_u16(status).unwrap(),
            error: "no".into(),
            message: "no".into(),
            headers: HeaderMap::new(),
        }
    }

    fn fake(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Fake {
        Fake {
            name,
            plugin: name.into(),
            described: described(true, true),
            on_error: OnError::Deny,
            log: log.clone(),
            request: |_, _| Ok(go_on()),
            response: |_| Ok(pass()),
        }
    }

    /// A fake whose request hook refuses with 401.
    fn refusing(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Fake {
        let mut fake = fake(name, log);
        fake.request = |_, _| {
            Ok(RequestVerdict {
                decision: Decision::Reject(reject(401)),
                ..go_on()
            })
        };
        fake
    }

    impl Filter for Fake {
        fn described(&self) -> &Described {
            &self.described
        }

        fn on_error(&self) -> OnError {
            self.on_error
        }

        fn failure(&self, kind: FailureKind, detail: String) -> Failure {
            Failure {
                kind,
                route: "r".into(),
                plugin: self.name.into(),
                detail,
            }
        }

        fn observe(&self, _: bool, _: Duration) {}

        fn plugin(&self) -> &Arc<str> {
            &self.plugin
        }

        async fn on_request(
            &self,
            view: RequestView,
            ctx: Context,
            inputs: Vec<Option<String>>,
            _: &HeaderValue,
            _: usize,
        ) -> (RequestView, Context, Result<RequestVerdict, Failure>) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}.request", self.name));
            let result =
                (self.request)(&view, &inputs).map_err(|d| self.failure(FailureKind::Error, d));
            (view, ctx, result)
        }

        async fn on_response(
            &self,
            view: ResponseView,
            ctx: Context,
            _: Vec<Option<String>>,
            _: &HeaderValue,
            _: usize,
        ) -> (ResponseView, Context, Result<ResponseVerdict, Failure>) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}.response", self.name));
            let result = (self.response)(&view).map_err(|d| self.failure(FailureKind::Error, d));
            (view, ctx, result)
        }
    }

    fn request() -> RequestView {
        RequestView {
            parts: http::Request::builder()
                .uri("/x")
                .header("x-key", "k1")
                .body(())
                .unwrap()
                .into_parts()
                .0,
            body: None,
            body_replaced: false,
            path_rewritten: false,
            client: std::net::IpAddr::from([127, 0, 0, 1]),
            tls: false,
        }
    }

    fn response() -> ResponseView {
        ResponseView {
            parts: http::Response::new(()).into_parts().0,
            body: None,
            body_replaced: false,
        }
    }

    fn id() -> HeaderValue {
        HeaderValue::from_static("id")
    }

    async fn run(chain: &Chain<Fake>) -> (RequestOutcome, ResponseView) {
        let (_, ctx, outcome, _) = chain.on_request(request(), Context::new(), &id(), 0).await;
        let ran = match &outcome {
            RequestOutcome::Respond { ran, .. } | RequestOutcome::Reject { ran, .. } => *ran,
            _ => chain.len(),
        };
        let (view, _, result, _) = chain.on_response(ran, response(), ctx, &id(), 0).await;
        assert!(matches!(result, Ok(ResponseOutcome::Done)), "{result:?}");
        (outcome, view)
    }

    #[tokio::test]
    async fn hook_calls_are_recorded_only_when_asked_for() {
        let log = Arc::default();
        let b = refusing("b", &log);
        let chain = Chain::new(vec![Arc::new(fake("a", &log)), Arc::new(b)]);
        let (_, mut ctx, _, _) = chain.on_request(request(), Context::new(), &id(), 0).await;
        assert!(ctx.take_hooks().is_empty());

        let mut ctx = Context::new();
        ctx.record_hooks();
        let (_, ctx, outcome, _) = chain.on_request(request(), ctx, &id(), 0).await;
        let RequestOutcome::Reject { ran, .. } = outcome else {
            panic!("{outcome:?}")
        };
        let (_, mut ctx, _, _) = chain.on_response(ran, response(), ctx, &id(), 0).await;
        let calls: Vec<_> = ctx
            .take_hooks()
            .into_iter()
            .map(|c| (c.plugin.to_string(), c.response, c.outcome))
            .collect();
        assert_eq!(
            calls,
            [
                ("a".to_owned(), false, "continue"),
                ("b".to_owned(), false, "reject"),
                ("a".to_owned(), true, "continue"),
            ]
        );
    }

    #[tokio::test]
    async fn request_phase_in_order_response_phase_in_reverse() {
        let log = Arc::default();
        let chain = Chain::new(vec![Arc::new(fake("a", &log)), Arc::new(fake("b", &log))]);
        let (outcome, _) = run(&chain).await;
        assert!(matches!(outcome, RequestOutcome::Continue));
        assert_eq!(
            *log.lock().unwrap(),
            ["a.request", "b.request", "b.response", "a.response"]
        );
    }

    #[tokio::test]
    async fn an_answer_skips_the_rest_and_only_earlier_plugins_see_the_response() {
        let log = Arc::default();
        let b = refusing("b", &log);
        let chain = Chain::new(vec![
            Arc::new(fake("a", &log)),
            Arc::new(b),
            Arc::new(fake("c", &log)),
        ]);
        let (outcome, _) = run(&chain).await;
        assert!(matches!(outcome, RequestOutcome::Reject { ran: 1, .. }));
        assert_eq!(
            *log.lock().unwrap(),
            ["a.request", "b.request", "a.response"]
        );
    }

    #[tokio::test]
    async fn hooks_not_asked_for_are_never_called_and_fixed_edits_apply_without_a_call() {
        let log = Arc::default();
        let mut fixed = fake("fixed", &log);
        fixed.described = described(false, false);
        fixed.described.fixed_request = vec![Edit::set("x-gateway", "wasmgate").unwrap()];
        fixed.described.fixed_response = vec![Edit::set("x-served-by", "wasmgate").unwrap()];
        let mut reader = fake("reader", &log);
        reader.described.request_inputs = vec![Input::Header("x-gateway".parse().unwrap())];
        reader.request = |view, inputs| {
            assert_eq!(view.parts.headers["x-gateway"], "wasmgate");
            assert_eq!(inputs, [Some("wasmgate".to_owned())]);
            Ok(go_on())
        };
        let chain = Chain::new(vec![Arc::new(fixed), Arc::new(reader)]);
        let (_, view) = run(&chain).await;
        assert_eq!(view.parts.headers["x-served-by"], "wasmgate");
        assert_eq!(*log.lock().unwrap(), ["reader.request", "reader.response"]);
    }

    #[tokio::test]
    async fn scheduled_response_edits_apply_at_the_plugins_turn_without_a_response_call() {
        let log = Arc::default();
        let mut limiter = fake("limiter", &log);
        limiter.described = described(true, false);
        limiter.request = |_, _| {
            Ok(RequestVerdict {
                request_edits: vec![Edit::remove("x-key").unwrap()],
                response_edits: vec![Edit::set("ratelimit-remaining", "4").unwrap()],
                context_writes: vec![("consumer".into(), Some("ann".into()))],
                ..go_on()
            })
        };
        let mut outer = fake("outer", &log);
        // Runs after the limiter on the way back: sees its edit.
        outer.response = |view| {
            assert_eq!(view.parts.headers["ratelimit-remaining"], "4");
            Ok(pass())
        };
        let chain = Chain::new(vec![Arc::new(outer), Arc::new(limiter)]);
        let (view, ctx, outcome, _) = chain.on_request(request(), Context::new(), &id(), 0).await;
        assert!(matches!(outcome, RequestOutcome::Continue));
        assert!(!view.parts.headers.contains_key("x-key"));
        assert_eq!(ctx.get("consumer"), Some("ann"));
        let (view, _, result, _) = chain.on_response(2, response(), ctx, &id(), 0).await;
        assert!(matches!(result, Ok(ResponseOutcome::Done)));
        assert_eq!(view.parts.headers["ratelimit-remaining"], "4");
        assert_eq!(
            *log.lock().unwrap(),
            ["outer.request", "limiter.request", "outer.response"]
        );
    }

    #[tokio::test]
    async fn a_failure_denies_or_is_skipped_as_configured() {
        let log = Arc::default();
        let mut failing = fake("failing", &log);
        failing.request = |_, _| Err("boom".into());
        let chain = Chain::new(vec![Arc::new(failing), Arc::new(fake("after", &log))]);
        let (_, _, outcome, _) = chain.on_request(request(), Context::new(), &id(), 0).await;
        assert!(matches!(outcome, RequestOutcome::Failed(ref f) if f.detail == "boom"));
        assert_eq!(*log.lock().unwrap(), ["failing.request"]);

        let log = Arc::default();
        let mut allowed = fake("allowed", &log);
        allowed.request = |_, _| Err("boom".into());
        allowed.on_error = OnError::Allow;
        let chain = Chain::new(vec![Arc::new(allowed), Arc::new(fake("after", &log))]);
        let (_, _, outcome, _) = chain.on_request(request(), Context::new(), &id(), 0).await;
        assert!(matches!(outcome, RequestOutcome::Continue));
        assert_eq!(*log.lock().unwrap(), ["allowed.request", "after.request"]);
    }

    #[tokio::test]
    async fn a_refusal_in_the_response_phase_stops_there_for_the_caller_to_render() {
        let log = Arc::default();
        let mut refusing = fake("refusing", &log);
        refusing.response = |_| {
            Ok(ResponseVerdict {
                decision: Decision::Reject(reject(502)),
                ..pass()
            })
        };
        let chain = Chain::new(vec![
            Arc::new(fake("a", &log)),
            Arc::new(refusing),
            Arc::new(fake("c", &log)),
        ]);
        let (_, ctx, _, _) = chain.on_request(request(), Context::new(), &id(), 0).await;
        let (_, _, result, _) = chain.on_response(3, response(), ctx, &id(), 0).await;
        assert!(matches!(
            result,
            Ok(ResponseOutcome::Reject { remaining: 1, .. })
        ));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "a.request",
                "refusing.request",
                "c.request",
                "c.response",
                "refusing.response"
            ]
        );
    }
}
