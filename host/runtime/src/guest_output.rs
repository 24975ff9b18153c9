//! A plugin's stdout and stderr: each line becomes a log event tagged with route and plugin (a
//! panic message, a stray `println!`), so guest output is visible to operators and never reaches
//! a client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::imports::Tags;

/// Guest stdout/stderr: each line becomes a log event tagged with route and plugin.
pub(crate) struct GuestOutput {
    pub(crate) tags: Arc<Tags>,
    pub(crate) stream: &'static str,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            tags: self.tags.clone(),
            stream: self.stream,
            line: Vec::new(),
        })
    }
}

/// Longest line kept; longer output is logged in pieces of this size.
const MAX_LINE: usize = 4096;

struct LineLogger {
    tags: Arc<Tags>,
    stream: &'static str,
    line: Vec<u8>,
}

impl LineLogger {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        tracing::warn!(
            target: "wasmgate::plugin",
            route = &*self.tags.route,
            plugin = &*self.tags.plugin,
            stream = self.stream,
            "{}",
            text.trim_end()
        );
        self.line.clear();
    }
}

impl tokio::io::AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        for &b in buf {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        self.emit();
    }
}
