//! The request handler every connection shares: it hands each request to a [`Session`] on the
//! [`Snapshot`] current when the request arrived.

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::record::Recorded;
use crate::session::{ConnInfo, Session};
use crate::snapshot::Snapshot;

/// The request handler shared by every connection.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) snapshot: ArcSwap<Snapshot>,
}

impl Proxy {
    pub(crate) fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
        }
    }

    /// Serves one request. Never fails: every failure is a response made by [`Rejection`].
    /// The request is counted and logged once its response body has been sent.
    ///
    /// [`Rejection`]: crate::rescue::Rejection
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Response<Recorded> {
        let snapshot = self.snapshot.load_full();
        let (session, req) = Session::new(&snapshot, conn, req);
        session.run(req).await
    }
}
