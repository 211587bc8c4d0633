//! Diagnostics through `tracing`. The `tracknet` binary installs [`init`]: by default the
//! user-facing lines print exactly as written (warnings as `warning: …`); with `RUST_LOG` set
//! (e.g. `RUST_LOG=tracknet_train=debug`) every event prints with its level and target.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Messages as a user reads them: info plain, warnings and errors prefixed.
struct UserLines;

impl<S, N> FormatEvent<S, N> for UserLines
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
        match *event.metadata().level() {
            Level::ERROR => write!(writer, "error: ")?,
            Level::WARN => write!(writer, "warning: ")?,
            Level::INFO => {}
            level => write!(writer, "{level} {}: ", event.metadata().target())?,
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the stderr subscriber once (later calls do nothing). `quiet` keeps warnings and
/// errors only, unless `RUST_LOG` says otherwise.
pub fn init(quiet: bool) {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let result = match EnvFilter::try_from_default_env() {
        Ok(filter) => builder.with_env_filter(filter).try_init(),
        Err(_) => {
            let level = if quiet { "warn" } else { "info" };
            builder
                .with_env_filter(EnvFilter::new(level))
                .event_format(UserLines)
                .try_init()
        }
    };
    // Already installed (a test or an embedding program did): keep theirs.
    let _ = result;
}
