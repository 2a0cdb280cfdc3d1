//! OTLP trace export (cargo feature `otlp`): when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g. `http://127.0.0.1:4318`), every
//! tracing span of the node (the `http` span of each API request, the `exec`
//! span of each plugin command, ...) is exported over OTLP/HTTP, with its
//! `trace_id` field (the Plexus trace id) as an attribute.

use opentelemetry::trace::TracerProvider as _;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The export layer, or `None` when no endpoint is configured or the
/// exporter cannot be built (said on stderr; the node runs without it).
pub fn layer<S>() -> Option<impl Layer<S>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("warning: OTLP exporter not started: {e}");
            return None;
        }
    };
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("plexus")
                .build(),
        )
        .build();
    let tracer = provider.tracer("plexus");
    opentelemetry::global::set_tracer_provider(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}
