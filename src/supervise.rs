//! Supervision: the first failure of a component that cannot recover by
//! itself, kept for whoever decides what happens next (`coldstream run`
//! stops with a non-zero exit and the reason; the gateway's health turns
//! NOT_SERVING).

use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::server::ServerError;

/// The failures of a server's components; cheap to clone.
#[derive(Clone, Default)]
pub struct Failures(Arc<Shared>);

#[derive(Default)]
struct Shared {
    first: Mutex<Option<String>>,
    changed: tokio::sync::Notify,
}

impl Failures {
    /// Records that `component` stopped for `reason`; only the first counts.
    pub fn fail(&self, component: &str, reason: impl Display) {
        let mut first = self.0.first.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if first.is_none() {
            let line = format!("the {component} stopped: {reason}");
            tracing::error!(failure = %line, "a component failed; the server cannot go on as it is");
            *first = Some(line);
        }
        drop(first);
        self.0.changed.notify_waiters();
    }

    /// The first failure, if any.
    pub fn first(&self) -> Option<String> {
        self.0.first.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Waits for the first failure.
    pub async fn failed(&self) -> String {
        loop {
            let changed = self.0.changed.notified();
            if let Some(first) = self.first() {
                return first;
            }
            changed.await;
        }
    }
}

/// What a panic said, as text.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Starts a named thread whose error or panic is recorded in `failures` as
/// soon as it happens (not only when someone joins it); joining gives the
/// same error, a panic included.
pub fn supervised(
    name: &'static str,
    failures: &Failures,
    body: impl FnOnce() -> Result<(), ServerError> + Send + 'static,
) -> Result<JoinHandle<Result<(), ServerError>>, ServerError> {
    let failures = failures.clone();
    crate::server::spawn(name, move || {
        let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(outcome) => outcome,
            Err(panic) => Err(ServerError::Inconsistent(format!("the {name} panicked: {}", panic_message(&*panic)))),
        };
        if let Err(error) = &outcome {
            failures.fail(name, error);
        }
        outcome
    })
}
