//! Chaos: steady keep-alive load through an upstream of three targets while two of them are
//! killed at once and restarted. No idempotent request may fail, and the killed targets must take
//! traffic again within two health check intervals of coming back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmgate_tests::*;

const INTERVAL: Duration = Duration::from_millis(250);
const CLIENTS: usize = 8;

/// Each answer: when it arrived and which target sent it.
type Answers = Arc<Mutex<Vec<(Instant, String)>>>;

async fn load(
    url: String,
    stop: Arc<AtomicBool>,
    answers: Answers,
    failures: Arc<Mutex<Vec<String>>>,
) {
    // One keep-alive connection per client task.
    let c = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    while !stop.load(Ordering::Relaxed) {
        match c.get(&url).send().await {
            Ok(resp) if resp.status() == 200 => {
                let server = resp.headers()["x-echo-server"]
                    .to_str()
                    .expect("ascii")
                    .to_owned();
                answers.lock().expect("lock").push((Instant::now(), server));
            }
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                failures
                    .lock()
                    .expect("lock")
                    .push(format!("{status}: {body}"));
            }
            Err(e) => failures.lock().expect("lock").push(e.to_string()),
        }
    }
}

/// The tries sent to `target` so far, whatever their outcome (as the gateway counts them).
fn tries(gw: &TestGateway, target: &KillableUpstream) -> u64 {
    let prefix = format!(
        "wasmgate_upstream_requests_total{{upstream=\"pool\",target=\"{}\",",
        target.addr
    );
    gw.metrics()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The first answer from `server` at or after `since`.
fn first_answer(answers: &Answers, server: &str, since: Instant) -> Option<Instant> {
    answers
        .lock()
        .expect("lock")
        .iter()
        .find(|(at, s)| *at >= since && s == server)
        .map(|(at, _)| *at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_two_of_three_targets_fails_no_request_and_they_return_within_two_intervals() {
    let mut a = KillableUpstream::start("a").await;
    let mut b = KillableUpstream::start("b").await;
    let c = KillableUpstream::start("c").await;
    let targets: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|t| format!("\"{}\"", t.addr))
        .collect();
    // Two retries: a request may meet both dead targets before the third. The budget's floor is
    // raised to the number of clients: with two of three targets gone at once, most requests in
    // flight are retries for a moment, which the default budget (3, or 20 %) would refuse.
    let keys = format!(
        "health_check = {{ path = \"/health\", interval = \"{}ms\", timeout = \"200ms\", healthy = 1, unhealthy = 2 }}\n\
         retries = {{ attempts = 2, min_retry_concurrency = {CLIENTS} }}",
        INTERVAL.as_millis()
    );
    let gw = TestGateway::start(&pool_config(&targets, &keys))
        .await
        .expect("start");
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Answers = Arc::default();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(load(
                gw.url("/"),
                stop.clone(),
                answers.clone(),
                failures.clone(),
            ))
        })
        .collect();
    let count = |answers: &Answers| answers.lock().expect("lock").len();
    eventually(Duration::from_secs(10), "steady load", || {
        count(&answers) >= 300
    })
    .await;

    a.kill().await;
    b.kill().await;
    eventually(
        Duration::from_secs(5),
        "the checker marks both down, under load all the while",
        || {
            gw.target("pool", a.addr).check == Some(false)
                && gw.target("pool", b.addr).check == Some(false)
        },
    )
    .await;
    // Requests that chose a or b just before may still be on their way to them.
    let marked = count(&answers);
    eventually(Duration::from_secs(10), "load goes on", || {
        count(&answers) >= marked + 50
    })
    .await;
    let tries_of_the_dead = || tries(&gw, &a) + tries(&gw, &b);
    let met = tries_of_the_dead();
    let during = count(&answers);
    eventually(Duration::from_secs(10), "load goes on", || {
        count(&answers) >= during + 200
    })
    .await;
    assert_eq!(
        tries_of_the_dead(),
        met,
        "requests were still sent to targets marked down"
    );

    a.restart().await;
    b.restart().await;
    let returned = Instant::now();
    eventually(
        Duration::from_secs(10),
        "a and b take traffic again",
        || {
            first_answer(&answers, "a", returned).is_some()
                && first_answer(&answers, "b", returned).is_some()
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("load task");
    }

    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    for server in ["a", "b"] {
        let back = first_answer(&answers, server, returned).expect("answered") - returned;
        eprintln!("{server} took traffic again {back:?} after its restart");
        assert!(
            back <= INTERVAL * 2,
            "{server} took {back:?} to take traffic again (interval {INTERVAL:?})"
        );
    }
    let total = count(&answers);
    assert!(total >= 800, "only {total} requests under load");
}
