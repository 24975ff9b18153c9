//! OpenTelemetry traces: the tracer the data path starts spans with, and their export over
//! OTLP/HTTP (protobuf) to `[gateway.tracing] endpoint`.
//!
//! Spans are handed to the SDK's batch processor, which exports from a thread of its own, so a
//! slow or absent collector never holds a request: when its queue is full, spans are dropped
//! (and the SDK says so in its own log).

use std::collections::HashMap;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use wasmgate_config::Tracing as TracingConfig;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// The exporter could not be built from the configuration.
    #[error("cannot export traces to {endpoint}: {reason}")]
    Exporter {
        /// The URL spans would have been sent to.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
}

/// The gateway's tracer and the pipeline that exports what it records.
#[derive(Debug, Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Tracing {
    /// Starts the export pipeline for `config`. Exports run on `runtime` (the HTTP client needs
    /// tokio), started from the batch processor's thread.
    pub fn start(
        config: &TracingConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, TracingError> {
        let endpoint = traces_url(&config.endpoint);
        let failed = |reason: String| TracingError::Exporter {
            endpoint: endpoint.clone(),
            reason,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| failed(format!("no root certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = OnRuntime {
            client: opentelemetry_http::hyper::HyperClient::new(https, config.timeout, None),
            runtime,
        };
        let headers: HashMap<String, String> = config.headers.iter().cloned().collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(config.timeout)
            .with_headers(headers)
            .with_http_client(client)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(
                        BatchConfigBuilder::default()
                            .with_scheduled_delay(config.export_interval)
                            .build(),
                    )
                    .build(),
            )
            // A client's sampling decision is kept; new traces are sampled by ratio.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("wasmgate");
        Ok(Self { provider, tracer })
    }

    /// The tracer requests start their spans with.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Exports the spans still queued, waiting up to the export timeout. Blocks: call it off
    /// the async runtime's threads.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

/// The OTLP/HTTP traces URL of a collector given by its base URL: `/v1/traces` is added when
/// the URL names no path of its own (as `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
fn traces_url(endpoint: &str) -> String {
    match endpoint.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.path(), "" | "/") => {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_owned(),
    }
}

/// hyper's client on the gateway's runtime, for the batch processor's thread, which has none.
#[derive(Debug)]
struct OnRuntime {
    client: opentelemetry_http::hyper::HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    >,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as HttpError)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_to_a_base_url_only() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otlp.example.com/otlp/v1/traces"),
            "https://otlp.example.com/otlp/v1/traces"
        );
    }
}
