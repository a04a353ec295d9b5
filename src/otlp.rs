//! Exports the spans of followed batches ([`coldstream_pipelines::traces`])
//! to an OpenTelemetry collector over OTLP/gRPC, in batches from a
//! background thread, when `[tracing] otlp_endpoint` is set. Only spans
//! of the batch-path target are exported; log lines are not.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::TracingSection;

/// The span exporter; its drop sends what is still buffered.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Starts exporting to `section.otlp_endpoint`. Call it within a tokio
    /// runtime that outlives the exporter: the gRPC client runs on it.
    pub fn start(section: &TracingSection) -> Result<Exporter, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(section.otlp_endpoint.clone())
            .build()
            .map_err(|e| format!("tracing.otlp_endpoint {}: {e}", section.otlp_endpoint))?;
        let resource = Resource::builder().with_service_name(section.service_name.clone()).build();
        let provider = SdkTracerProvider::builder().with_resource(resource).with_batch_exporter(exporter).build();
        Ok(Exporter { provider })
    }

    /// The layer that hands the batch-path spans to the exporter.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.tracer("coldstream");
        let only_batch_paths = tracing_subscriber::filter::Targets::new()
            .with_target(coldstream_pipelines::traces::TARGET, tracing::Level::TRACE);
        tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_batch_paths)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "sending the last spans to the OTLP collector");
        }
    }
}
