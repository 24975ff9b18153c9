//! `wasmgate-echo [ADDR] [NAME]`: serve the echo upstream (default 127.0.0.1:9001).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let name = args.next().unwrap_or_else(|| "echo".to_owned());
    let bound = wasmgate_echo::spawn(addr.parse()?, &name).await?;
    eprintln!("echo upstream listening on http://{bound}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
