//! What [`Request`](crate::Request) and [`Response`](crate::Response) share when they stand for a
//! message in the gateway: the declared inputs that came with the call, and header edits collected
//! until the hook returns (or until a read would otherwise miss them).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use crate::__bindings::wasmgate::plugin::types;
use crate::HeaderEdit;
use crate::inputs::{Declared, Input};

/// The gateway's request or response resource, as far as headers go.
pub(crate) trait Handle {
    /// The position of `input` among this message's declared inputs.
    fn position(declared: &Declared, input: &Input) -> Option<usize>;
    /// The position of header `name` (any case) among this message's declared inputs.
    fn header_position(declared: &Declared, name: &str) -> Option<usize>;
    fn handle(&self) -> u32;
    fn header(&self, name: &str) -> Option<String>;
    fn header_all(&self, name: &str) -> Vec<String>;
    fn headers_get(&self, names: &[&str]) -> Vec<Option<String>>;
    fn headers(&self) -> Vec<(String, String)>;
    fn edit_headers(&self, edits: &[types::HeaderEditParam<'_>]);
}

macro_rules! handle {
    ($ty:ty, $position:ident, $header_position:ident) => {
        impl Handle for $ty {
            fn position(declared: &Declared, input: &Input) -> Option<usize> {
                declared.$position(input)
            }
            fn header_position(declared: &Declared, name: &str) -> Option<usize> {
                declared.$header_position(name)
            }
            fn handle(&self) -> u32 {
                <$ty>::handle(self)
            }
            fn header(&self, name: &str) -> Option<String> {
                <$ty>::header(self, name)
            }
            fn header_all(&self, name: &str) -> Vec<String> {
                <$ty>::header_all(self, name)
            }
            fn headers_get(&self, names: &[&str]) -> Vec<Option<String>> {
                <$ty>::headers_get(self, names)
            }
            fn headers(&self) -> Vec<(String, String)> {
                <$ty>::headers(self)
            }
            fn edit_headers(&self, edits: &[types::HeaderEditParam<'_>]) {
                // Every edit was checked when it was made; the gateway refuses only past its
                // header limit, which the hook learns from the verdict.
                let _ = <$ty>::edit_headers(self, edits);
            }
        }
    };
}

handle!(types::Request, request, request_header);
handle!(types::Response, response, response_header);

/// A message in the gateway, seen through one hook call.
pub(crate) struct HostMessage<'a, H> {
    pub(crate) handle: &'a H,
    declared: &'a Declared,
    /// The declared inputs' values, in declaration order.
    inputs: Vec<Option<String>>,
    /// Header edits not sent yet: handed back with the verdict, or sent before a read that
    /// would see them. Their names are lowercase, and their declared values are stale.
    edits: RefCell<Vec<HeaderEdit>>,
    /// Headers edited during the call whose edits were already sent (lowercase): their
    /// declared values are stale too. Kept apart from `edits` so the common hook, whose edits
    /// all go back with the verdict, allocates nothing to track them.
    sent: RefCell<BTreeSet<String>>,
}

/// Pending edits beyond which they are sent at once: bounds the scan of `edits` on every read
/// (a hook may edit thousands of headers; the gateway refuses that, but not slowly).
const MAX_PENDING_EDITS: usize = 32;

impl<H: Handle> fmt::Debug for HostMessage<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostMessage")
            .field("host_handle", &self.handle.handle())
            .field("inputs", &self.inputs)
            .field("edits", &self.edits.borrow())
            .finish()
    }
}

impl<'a, H: Handle> HostMessage<'a, H> {
    pub(crate) fn new(handle: &'a H, declared: &'a Declared, inputs: Vec<Option<String>>) -> Self {
        Self {
            handle,
            declared,
            inputs,
            edits: RefCell::new(Vec::new()),
            sent: RefCell::new(BTreeSet::new()),
        }
    }

    /// The collected edits not sent yet, for the verdict.
    pub(crate) fn into_edits(self) -> Vec<HeaderEdit> {
        self.edits.into_inner()
    }

    /// The declared value of `input`, if it was declared.
    pub(crate) fn input(&self, input: &Input) -> Option<Option<&str>> {
        let i = H::position(self.declared, input)?;
        Some(self.inputs.get(i).and_then(Option::as_deref))
    }

    /// Sends the collected header edits now, when there are any.
    pub(crate) fn flush(&self) {
        let edits = std::mem::take(&mut *self.edits.borrow_mut());
        if !edits.is_empty() {
            self.handle.edit_headers(&to_wit_edits(&edits));
            self.sent
                .borrow_mut()
                .extend(edits.iter().map(|edit| edit.name().to_owned()));
        }
    }

    /// Whether header `name` was edited during this call (its declared value is then stale);
    /// when it was, the collected edits are sent first, so a read sees them.
    fn edited(&self, name: &str) -> bool {
        let pending = self
            .edits
            .borrow()
            .iter()
            .any(|edit| edit.name().eq_ignore_ascii_case(name));
        let sent = || {
            let sent = self.sent.borrow();
            !sent.is_empty()
                && if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    sent.contains(&name.to_ascii_lowercase())
                } else {
                    sent.contains(name)
                }
        };
        let edited = pending || sent();
        if edited {
            self.flush();
        }
        edited
    }

    /// Marks header `name` as changed by something other than a header edit (a new body's
    /// `content-length`): the edits so far are sent first, to keep their order with it.
    pub(crate) fn touched(&mut self, name: &str) {
        self.flush();
        self.sent.get_mut().insert(name.to_owned());
    }

    /// The declared value of header `name`, unless edited during this call.
    fn declared_header(&self, name: &str) -> Option<Option<&str>> {
        if self.edited(name) {
            return None;
        }
        let i = H::header_position(self.declared, name)?;
        Some(self.inputs.get(i).and_then(Option::as_deref))
    }

    pub(crate) fn header(&self, name: &str) -> Option<String> {
        match self.declared_header(name) {
            Some(value) => value.map(str::to_owned),
            None => self.handle.header(name),
        }
    }

    pub(crate) fn header_all(&self, name: &str) -> Vec<String> {
        self.edited(name);
        self.handle.header_all(name)
    }

    pub(crate) fn headers_get(&self, names: &[&str]) -> Vec<Option<String>> {
        let mut out: Vec<Option<Option<String>>> = names
            .iter()
            .map(|name| {
                self.declared_header(name)
                    .map(|value| value.map(str::to_owned))
            })
            .collect();
        let missing: Vec<&str> = names
            .iter()
            .zip(&out)
            .filter(|(_, found)| found.is_none())
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            let mut fetched = self.handle.headers_get(&missing).into_iter();
            for slot in out.iter_mut().filter(|slot| slot.is_none()) {
                *slot = Some(fetched.next().flatten());
            }
        }
        out.into_iter().map(Option::flatten).collect()
    }

    pub(crate) fn headers(&self) -> Vec<(String, String)> {
        self.flush();
        self.handle.headers()
    }

    pub(crate) fn edit(&mut self, edit: HeaderEdit) {
        self.edits.get_mut().push(edit);
        if self.edits.get_mut().len() >= MAX_PENDING_EDITS {
            self.flush();
        }
    }
}

/// Header edits as the gateway takes them.
fn to_wit_edits(edits: &[HeaderEdit]) -> Vec<types::HeaderEditParam<'_>> {
    edits
        .iter()
        .map(|edit| match edit {
            HeaderEdit::Set { name, value } => types::HeaderEditParam::Set((name, value)),
            HeaderEdit::Append { name, value } => types::HeaderEditParam::Append((name, value)),
            HeaderEdit::Remove { name } => types::HeaderEditParam::Remove(name),
        })
        .collect()
}
