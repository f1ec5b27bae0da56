//! Logging set-up (SPEC §3, `LOG_LEVEL` and `LOG_FORMAT`): human-readable
//! lines by default, or with `LOG_FORMAT=json` exactly one flat JSON object
//! per line on stderr: `timestamp`, `level`, `target`, `message`, then the
//! fields of the enclosing spans (e.g. `requestId` from the request span)
//! and of the event itself (`sessionId`, `streamId`, ...). Field names are
//! camelCased like every other JSON sluice emits.

use std::fmt;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Settings};

/// Always-on directives appended to `LOG_LEVEL`: warp's own per-request
/// lines would duplicate sluice's access log.
const QUIET: &[&str] = &["warp::filters::trace=off"];

/// Installs the global subscriber (no-op if one is already installed).
pub fn init(settings: &Settings) {
    let mut filter =
        EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    for d in QUIET {
        if let Ok(d) = d.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// One flat JSON object per event.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut obj = Map::new();
        obj.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(SystemTime::now())
                .to_string()
                .into(),
        );
        obj.insert("level".into(), meta.level().as_str().into());
        obj.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                // With JsonFields, span fields are stored as a JSON object.
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(fields.as_str()) {
                    for (k, v) in m {
                        obj.insert(camel_case(&k), v);
                    }
                }
            }
        }
        event.record(&mut Fields(&mut obj));
        writeln!(writer, "{}", Value::Object(obj))
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, v: Value) {
        self.0.insert(camel_case(field.name()), v);
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.put(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

/// `session_id` -> `sessionId`; `r#type` -> `type`; camelCase stays as is.
pub fn camel_case(name: &str) -> String {
    let name = name.strip_prefix("r#").unwrap_or(name);
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_camel_cased() {
        assert_eq!(camel_case("session_id"), "sessionId");
        assert_eq!(camel_case("duration_ms"), "durationMs");
        assert_eq!(camel_case("requestId"), "requestId");
        assert_eq!(camel_case("message"), "message");
        assert_eq!(camel_case("r#type"), "type");
    }
}
