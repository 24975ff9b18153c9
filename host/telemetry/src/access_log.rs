//! The access log: one JSON object per request, written by a thread of its own so the data path
//! never waits on a disk or a pipe.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::Metrics;

/// Lines waiting for the writer; beyond, lines are dropped and counted
/// (`wasmgate_access_log_dropped_total`) rather than slowing requests down.
const QUEUE: usize = 16 * 1024;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct AccessEntry<'a> {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The `x-request-id` the gateway used (the client's, or one it made).
    pub request_id: &'a str,
    /// The client's IP address as the gateway saw it.
    pub client: IpAddr,
    /// The request method.
    pub method: &'a str,
    /// The host the client asked for, if any.
    pub host: Option<&'a str>,
    /// The request path, without the query.
    pub path: &'a str,
    /// The route that matched, if any.
    pub route: Option<&'a str>,
    /// The upstream target the request went to, if any.
    pub upstream: Option<&'a str>,
    /// The status sent to the client.
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From arrival until the response body was sent, in milliseconds.
    pub duration_ms: f64,
    /// Time spent in the route's plugins (both phases, including waits for an instance).
    pub plugin_ms: f64,
    /// The subject of the client's verified certificate (`[gateway.tls] client_auth`); omitted
    /// when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<&'a str>,
    /// The request's trace ID, 32 hex digits (`[gateway.tracing]`); omitted when tracing is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    /// The route cache's answer (`HIT`, `MISS`, `BYPASS`); omitted on routes without a cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    /// The coding the gateway compressed the response with (`gzip`, `br`, `zstd`); omitted when
    /// it did not compress it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*time))
}

/// Where access log lines go.
#[derive(Debug)]
pub struct AccessLog {
    sink: Option<SyncSender<Vec<u8>>>,
    dropped: Counter,
}

impl AccessLog {
    /// No access log.
    pub fn off() -> Self {
        Self {
            sink: None,
            dropped: Counter::default(),
        }
    }

    /// Lines to standard output.
    pub fn stdout(metrics: &Metrics) -> io::Result<Self> {
        Self::spawn(Box::new(io::stdout()), "stdout".into(), metrics)
    }

    /// Lines appended to `path` (created if missing). Opening anew on each reload lets
    /// `logrotate` move the file and then reload the gateway.
    pub fn file(path: &Path, metrics: &Metrics) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Self::spawn(Box::new(file), path.to_path_buf(), metrics)
    }

    fn spawn(out: Box<dyn Write + Send>, name: PathBuf, metrics: &Metrics) -> io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("wasmgate-access-log".into())
            .spawn(move || write_lines(rx, out, &name))?;
        Ok(Self {
            sink: Some(tx),
            dropped: metrics.access_log_dropped(),
        })
    }

    /// Whether lines are written at all (callers skip gathering fields otherwise).
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Queues one line.
    pub fn write(&self, entry: &AccessEntry<'_>) {
        let Some(sink) = &self.sink else { return };
        let mut line = Vec::with_capacity(320);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = sink.try_send(line) {
            self.dropped.inc();
        }
    }
}

/// How long the writer waits for more lines when the queue runs empty before it sleeps until
/// the next one. While lines keep coming it never blocks in `recv`: a blocked receiver costs
/// every sender a wake-up (a futex call, and a context switch on the worker's CPU) per line.
const LINGER: Duration = Duration::from_millis(10);

/// Writes until every sender is gone, flushing whenever the queue runs empty, then flushes once
/// more so a drained gateway loses no line. Lines reach the file at most `LINGER` after they
/// were queued.
fn write_lines(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>, name: &Path) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut failing = false;
    let mut open = true;
    while open && let Ok(first) = rx.recv() {
        let mut result = out.write_all(&first);
        let mut lingered = false;
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    lingered = false;
                    if result.is_ok() {
                        result = out.write_all(&line);
                    }
                }
                Err(TryRecvError::Empty) if !lingered => {
                    result = result.and_then(|()| out.flush());
                    std::thread::sleep(LINGER);
                    lingered = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let result = result.and_then(|()| out.flush());
        match (result, failing) {
            (Err(e), false) => {
                tracing::error!(log = %name.display(), error = %e, "cannot write the access log");
                failing = true;
            }
            (Ok(()), true) => failing = false,
            _ => {}
        }
    }
    let _ = out.flush();
}

/// Milliseconds as a float with microsecond precision, for `duration_ms` and `plugin_ms`.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_json_object_per_line_and_flushes_on_drop() {
        let dir = std::env::temp_dir().join(format!("wasmgate-al-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let metrics = Metrics::new();
        let log = AccessLog::file(&path, &metrics).unwrap();
        for status in [200, 404] {
            log.write(&AccessEntry {
                time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_500),
                request_id: "r-1",
                client: "203.0.113.7".parse().unwrap(),
                method: "GET",
                host: Some("api.example.com"),
                path: "/users/7",
                route: Some("users"),
                upstream: Some("127.0.0.1:9001"),
                status,
                bytes_in: 0,
                bytes_out: 12,
                duration_ms: millis(Duration::from_micros(1234)),
                plugin_ms: 0.0,
                client_cert: (status == 200).then_some("CN=app,O=Example"),
                trace_id: None,
                cache: (status == 200).then_some("HIT"),
                encoding: None,
            });
        }
        drop(log);
        // The writer thread flushes when the last sender is gone; wait for its lines.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::yield_now();
        };
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["time"], "1970-01-01T00:00:01.500Z");
        assert_eq!(lines[0]["client"], "203.0.113.7");
        assert_eq!(lines[0]["duration_ms"], 1.234);
        assert_eq!(lines[1]["status"], 404);
        assert_eq!(lines[0]["client_cert"], "CN=app,O=Example");
        assert!(lines[1].get("client_cert").is_none(), "omitted without one");
        assert_eq!(lines[0]["cache"], "HIT");
        assert!(lines[1].get("cache").is_none());
        assert!(lines[0].get("encoding").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
