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
        })
    }

    /// Sets the body of the answer. No effect on [`Action::Continue`].
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        if let Self::Respond(reply) = &mut self {
            reply.body = body.into();
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
/// [`Action::respond`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
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
