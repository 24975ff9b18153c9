//! HTTP/2 conformance (RFC 9113): httpwg's 107 cases — h2spec's, ported to Rust — each on a
//! fresh connection to a gateway proxying to an echo upstream, with frames written and read
//! byte by byte.
//!
//! Every case must pass, but for the two in [`RACY`], whose outcome depends on timing in the
//! case itself: they run, and their failure is printed, not counted. `cargo xtask h2spec` runs
//! them all strictly, for the plain count, and `--target ADDR` runs them against any h2c server
//! (nginx, for comparison). Most of what passes only since the h2 crate is patched: see
//! `host/vendor/README.md`.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use httpwg::Conn;
use tokio::net::TcpStream;
use wasmgate_tests::*;

/// Cases that pass or fail by timing, by `SECTION::CASE`, and why.
const RACY: &[(&str, &str)] = &[
    (
        "_6_frame_definitions::sends_multiple_window_update_frames_increasing_flow_control_window_above_max",
        "the first of the case's two WINDOW_UPDATEs already takes the connection window past \
         2^31-1: the gateway sends GOAWAY(FLOW_CONTROL_ERROR) and closes, and the case's second \
         write fails when the close comes first (the case's stream variant allows for it)",
    ),
    (
        "_7_error_codes::sends_goaway_frame_with_unknown_error_code",
        "after a client's GOAWAY, a connection with no stream open is closed (RFC 9113 §6.8 \
         allows it: the client opens no more streams); the PING the case sends after it is \
         answered only when it arrives first",
    ),
];

/// How long a case waits for each frame it expects: h2spec's default. The gateway answers on
/// loopback in well under a millisecond.
///
/// httpwg's reader gives up after the same time without a byte and reports the connection
/// closed, and a case expecting an error takes a closed connection as one: a server that sends
/// nothing at all "passes" whenever the reader's timer fires before the case's own. So a verdict
/// that took the whole timeout was not the server's, and [`run`] counts it as a failure.
const FRAME_TIMEOUT: Duration = Duration::from_secs(2);

/// The server the cases run against: `WASMGATE_H2SPEC_TARGET`, or a gateway of this process
/// (on a thread and runtime of its own, as the cases each run on theirs).
fn target() -> SocketAddr {
    static TARGET: OnceLock<SocketAddr> = OnceLock::new();
    *TARGET.get_or_init(|| {
        if let Ok(addr) = std::env::var("WASMGATE_H2SPEC_TARGET") {
            return addr
                .parse()
                .unwrap_or_else(|e| panic!("WASMGATE_H2SPEC_TARGET={addr}: {e}"));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let up = echo_upstream("up").await;
                let gw = TestGateway::start(&proxy_everything_to(up, "workers = 1"))
                    .await
                    .expect("start");
                tx.send(gw.http).expect("send the address");
                // Serves for as long as the test process runs.
                std::future::pending::<()>().await;
                drop(gw);
            });
        });
        rx.recv().expect("the gateway started")
    })
}

/// `_6_frame_definitions::sends_data_frame_with_zero_length` of the case function's path.
fn case_name(path: &str) -> String {
    let path = path.split('<').next().unwrap_or(path);
    path.trim_start_matches("httpwg::rfc9113::").to_owned()
}

/// Runs one case on a runtime of its own (httpwg's connection is single-threaded).
fn run<F, Fut>(path: &str, case: F)
where
    F: FnOnce(Conn<TcpStream>) -> Fut + 'static,
    Fut: Future<Output = eyre::Result<()>> + 'static,
{
    let name = case_name(path);
    let addr = target();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let outcome: Result<(), String> = local.block_on(&runtime, async move {
        // httpwg's buffers; a small pool per thread (the default maps 256 MiB).
        if !buffet::bufpool::is_allocator_initialized() {
            buffet::bufpool::initialize_allocator_with_num_bufs(4096)
                .map_err(|e| format!("buffers: {e:?}"))?;
        }
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let config = httpwg::Config {
            host: addr.ip().to_string(),
            port: addr.port(),
            timeout: FRAME_TIMEOUT,
            ..Default::default()
        };
        let conn = Conn::new(Rc::new(config), stream);
        // A failed expectation panics inside the case: the task's panic is its failure.
        let started = Instant::now();
        let task = tokio::task::spawn_local(case(conn));
        match tokio::time::timeout(Duration::from_secs(15), task).await {
            Ok(Ok(Ok(()))) if started.elapsed() >= FRAME_TIMEOUT => Err(format!(
                "no answer within {FRAME_TIMEOUT:?}: only the case's own read timeout closed \
                 the connection"
            )),
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("{e:?}")),
            Ok(Err(panicked)) => Err(panic_message(panicked)),
            Err(_) => Err("no verdict within 15 s".to_owned()),
        }
    });
    let strict = std::env::var_os("WASMGATE_H2SPEC_STRICT").is_some()
        || std::env::var_os("WASMGATE_H2SPEC_TARGET").is_some();
    match (outcome, RACY.iter().find(|(case, _)| *case == name)) {
        (Ok(()), _) => {}
        (Err(why), Some((_, reason))) if !strict => {
            eprintln!("{name}: failed, by timing ({reason}): {why}");
        }
        (Err(why), _) => panic!("{name} failed: {why}"),
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".to_owned()),
        Err(e) => e.to_string(),
    }
}

httpwg_macros::tests! {{
    crate::h2spec::run(
        std::any::type_name_of_val(&test::<tokio::net::TcpStream>),
        test::<tokio::net::TcpStream>,
    );
}}
