//! The daemon's logs: one line per event on stderr, as human text, logfmt or JSON
//! (`splitter daemon --log-format`), filtered by `SPLITTER_LOG` (default `info`).
//!
//! Events carry their data as fields (`service=web from=1 to=10`), never as Rust debug dumps,
//! so a log pipeline (Loki, Vector, journald's JSON export) can index them:
//! - `text`: tracing's default format (colors only on a terminal, not with `NO_COLOR`);
//! - `logfmt`: `ts=... level=info target=splitter::daemon msg="configuration applied" added=web`,
//!   values quoted when they hold a space, `=`, `"` or nothing;
//! - `json`: `{"timestamp":...,"level":"INFO","fields":{"message":...,"added":"web"},"target":...}`.

use std::fmt::{self, Write as _};

use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::Writer,
        time::{FormatTime as _, SystemTime},
    },
    registry::LookupSpan,
};

/// The environment variable holding the log filter (`info`, `debug`, `splitter=debug`, ...).
pub const FILTER_ENV: &str = "SPLITTER_LOG";

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text (the default).
    #[default]
    Text,
    /// logfmt: `key=value` pairs, quoted where needed.
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber: `format` on stderr, filtered by `SPLITTER_LOG`.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(FILTER_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            // Colors only on a terminal, and not when NO_COLOR is set (https://no-color.org).
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty()),
            )
            .init(),
        LogFormat::Logfmt => builder.with_ansi(false).event_format(Logfmt).init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .with_current_span(false)
            .init(),
    }
}

/// A list of names as one field value: `web,api` (empty: nothing).
pub fn names(names: &[String]) -> String {
    names.join(",")
}

/// The logfmt event format (<https://brandur.org/logfmt>).
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let metadata = event.metadata();
        let mut line = String::new();
        write!(
            line,
            "ts={} level={} target={}",
            quoted(&time),
            metadata.level().as_str().to_ascii_lowercase(),
            quoted(metadata.target())
        )?;
        let mut fields = LogfmtFields {
            line: &mut line,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writeln!(writer, "{line}")
    }
}

/// Appends ` key=value` for each field; the message is `msg`.
struct LogfmtFields<'a> {
    line: &'a mut String,
    result: fmt::Result,
}

impl tracing::field::Visit for LogfmtFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let key = match field.name() {
            "message" => "msg",
            name => name,
        };
        if self.result.is_ok() {
            self.result = write!(self.line, " {key}={}", quoted(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// `value` as a logfmt value: bare when it can be, else in double quotes with `"` and `\`
/// escaped and control characters written as escapes (one event stays one line). An empty
/// value stays bare (`removed=`).
fn quoted(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=' && c != '\\');
    if bare || value.is_empty() {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{{{:04x}}}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn logfmt_values_are_quoted_only_when_needed() {
        assert_eq!(quoted("web"), "web");
        assert_eq!(quoted("eth0,eth1"), "eth0,eth1");
        assert_eq!(quoted(""), "");
        assert_eq!(quoted("data plane ready"), "\"data plane ready\"");
        assert_eq!(quoted("a=b"), "\"a=b\"");
        assert_eq!(quoted("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert_eq!(quoted("C:\\x"), "\"C:\\\\x\"");
    }
}
