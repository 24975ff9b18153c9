//! What the gateway does after a hook.

/// What the gateway does after a hook: go on, or answer the client.
///
/// ```
/// use wasmgate_sdk::Action;
///
/// let go_on = Action::Continue;
/// let answer = Action::respond(429)
///     .header("retry-after", "30")
///     .body("slow down");
/// # let _ = (go_on, answer);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on: to the next plugin, then to the upstream (request phase) or to the client (response
    /// phase).
    Continue,
    /// Answer with this response. In the request phase the rest of the request phase and the
    /// upstream are skipped, and the response phase runs for the plugins that already saw the
    /// request, in reverse order. In the response phase it replaces the response.
    Respond(Reply),
}

impl Action {
    /// An answer with `status` (100–999), no headers and an empty body; add them with
    /// [`Action::header`] and [`Action::body`].
    ///
    /// A status outside 100–999 or an invalid header makes the hook fail (a plugin error, so a
    /// generic 500 for the client) when the answer is handed to the gateway.
    pub fn respond(status: u16) -> Self {
        Self::Respond(Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            rejection: None,
        })
    }

    /// A refusal in the gateway's own error format: `status` (400–599) with
    /// `content-type: application/json` and the body
    /// `{"error": ERROR, "message": MESSAGE, "request_id": "…"}`, where the gateway fills in the
    /// request's `x-request-id`. Clients then get one error shape from the gateway and from every
    /// plugin. Add headers (`www-authenticate`, `retry-after`) with [`Action::header`].
    ///
    /// `error` is a short code for programs: 1–64 characters of `a-z`, `0-9` and `_`, such as
    /// `unauthorized`, `forbidden` or `rate_limited`; `message` is a sentence for people. In
    /// native tests the reply's body is the JSON without `request_id`, which only the gateway
    /// knows; in the gateway the plugin sends only the code and message.
    ///
    /// ```
    /// use wasmgate_sdk::Action;
    ///
    /// let denied = Action::reject(401, "unauthorized", "missing API key")
    ///     .header("www-authenticate", "Key realm=\"api\"");
    /// let reply = denied.reply().unwrap();
    /// assert_eq!(reply.status(), 401);
    /// assert_eq!(reply.error(), Some("unauthorized"));
    /// assert_eq!(reply.message(), Some("missing API key"));
    /// assert_eq!(reply.body(), br#"{"error":"unauthorized","message":"missing API key"}"#);
    /// ```
    ///
    /// A status outside 400–599 or an invalid code makes the hook fail, as an invalid
    /// [`Action::respond`] does.
    pub fn reject(status: u16, error: impl Into<String>, message: impl Into<String>) -> Self {
        let (error, message) = (error.into(), message.into());
        // The gateway renders the body (with the request id); natively, for tests, the reply
        // carries it without the id. The plugin itself never builds it.
        #[cfg(not(target_arch = "wasm32"))]
        let body = serde_json::json!({ "error": &error, "message": &message })
            .to_string()
            .into_bytes();
        #[cfg(target_arch = "wasm32")]
        let body = Vec::new();
        Self::Respond(Reply {
            status,
            headers: Vec::new(),
            body,
            rejection: Some(Rejection { error, message }),
        })
    }

    /// Sets the body of the answer. No effect on [`Action::Continue`]. On an
    /// [`Action::reject`] it replaces the error body, which makes the answer a plain
    /// [`Action::respond`].
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        if let Self::Respond(reply) = &mut self {
            reply.body = body.into();
            reply.rejection = None;
        }
        self
    }

    /// Adds a header to the answer (repeat for several values). No effect on [`Action::Continue`].
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Self::Respond(reply) = &mut self {
            reply.headers.push((name.into(), value.into()));
        }
        self
    }

    /// Whether this is [`Action::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Self::Continue)
    }

    /// The answer, if this is [`Action::Respond`].
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Self::Continue => None,
            Self::Respond(reply) => Some(reply),
        }
    }
}

/// An answer a plugin gives instead of letting the request go on; built with
/// [`Action::respond`] or [`Action::reject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Set by [`Action::reject`]: the gateway renders the body.
    pub(crate) rejection: Option<Rejection>,
}

/// The code and message of an [`Action::reject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) error: String,
    pub(crate) message: String,
}

impl Reply {
    /// The error code, if this is an [`Action::reject`].
    pub fn error(&self) -> Option<&str> {
        self.rejection.as_ref().map(|r| r.error.as_str())
    }

    /// The error message, if this is an [`Action::reject`].
    pub fn message(&self) -> Option<&str> {
        self.rejection.as_ref().map(|r| r.message.as_str())
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers, in the order they were added.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Checks what the gateway would refuse: a status outside 100–999, an invalid header name or
    /// value.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.rejection {
            if !(400..=599).contains(&self.status) {
                return Err(format!(
                    "invalid status {} in the plugin's rejection (400-599)",
                    self.status
                ));
            }
            if !valid_code(&r.error) {
                return Err(format!(
                    "invalid error code {:?} in the plugin's rejection (1-64 characters of a-z, 0-9 and _)",
                    r.error
                ));
            }
        }
        if !(100..=999).contains(&self.status) {
            return Err(format!(
                "invalid status {} in the plugin's answer (100-999)",
                self.status
            ));
        }
        for (name, value) in &self.headers {
            crate::headers::check_name(name).map_err(|e| format!("{e} in the plugin's answer"))?;
            crate::headers::check_value(name, value)
                .map_err(|e| format!("{e} in the plugin's answer"))?;
        }
        Ok(())
    }
}

/// An error code: 1 to 64 characters of `a-z`, `0-9` and `_`.
fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
