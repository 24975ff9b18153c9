//! An OTLP/HTTP collector for the tracing tests: it decodes every `POST /v1/traces` (protobuf)
//! and keeps the spans, as a real collector would receive them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use tokio::sync::Notify;

pub use opentelemetry_proto::tonic::trace::v1::Span;
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// A span as received, with the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct Received {
    /// The span.
    pub span: Span,
    /// Its resource's `service.name`.
    pub service: String,
}

impl Received {
    /// The trace ID as 32 hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span ID as 16 hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent's span ID as 16 hex digits (empty for a root span).
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// Whether the span is of `kind`.
    pub fn is(&self, kind: SpanKind) -> bool {
        self.span.kind == kind as i32
    }

    /// The value of attribute `key`, as text (numbers written out); `None` when absent.
    pub fn attribute(&self, key: &str) -> Option<String> {
        let value = self
            .span
            .attributes
            .iter()
            .find(|kv| kv.key == key)?
            .value
            .as_ref()?
            .value
            .as_ref()?;
        Some(match value {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            Value::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
    }

    /// Whether the span's status is an error.
    pub fn is_error(&self) -> bool {
        self.span.status.as_ref().is_some_and(|s| s.code == 2)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The collector: where it listens and what it received.
#[derive(Debug, Clone)]
pub struct Collector {
    /// Its base URL, for `[gateway.tracing] endpoint`.
    pub endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
}

impl Collector {
    /// Starts it on an ephemeral port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let collector = Self {
            endpoint: format!("http://{addr}"),
            spans: Arc::default(),
            arrived: Arc::default(),
        };
        let shared = collector.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, hyper::Error>(shared.export(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        collector
    }

    async fn export(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<bytes::Bytes>> {
        let path_ok = req.uri().path() == "/v1/traces";
        let protobuf = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/x-protobuf");
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let decoded = body
            .ok()
            .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
        let Some(request) = decoded.filter(|_| path_ok && protobuf) else {
            return hyper::Response::builder()
                .status(400)
                .body(Full::default())
                .expect("response");
        };
        {
            let mut spans = self.spans.lock().expect("lock");
            for resource_spans in request.resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        spans.push(Received {
                            span,
                            service: service.clone(),
                        });
                    }
                }
            }
        }
        self.arrived.notify_waiters();
        hyper::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(
                ExportTraceServiceResponse::default().encode_to_vec().into(),
            ))
            .expect("response")
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits (up to 10 s) until at least `n` spans of trace `trace_id` arrived, and returns
    /// them; panics with what arrived otherwise.
    pub async fn trace(&self, trace_id: &str, n: usize) -> Vec<Received> {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                let spans: Vec<Received> = self
                    .spans()
                    .into_iter()
                    .filter(|s| s.trace_id() == trace_id)
                    .collect();
                if spans.len() >= n {
                    return spans;
                }
                arrived.await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(spans) => spans,
            Err(_) => panic!(
                "fewer than {n} spans of trace {trace_id} arrived; all: {:#?}",
                self.spans()
            ),
        }
    }
}
