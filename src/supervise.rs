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

    /// Waits for a failure the caller has not seen: the first one, unless
    /// `seen` says the caller already has it; then it never returns, since
    /// only the first counts. A watcher that loops over this, passing
    /// whether it had seen a failure before it last looked, is woken once
    /// by the failure and does not spin after it.
    pub async fn unseen(&self, seen: bool) {
        if seen {
            std::future::pending::<()>().await;
        }
        self.failed().await;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_watcher_is_woken_by_the_first_failure_and_not_again() {
        let failures = Failures::default();
        let watching = tokio::spawn({
            let failures = failures.clone();
            async move { failures.unseen(false).await }
        });
        failures.fail("archiver", "disk full");
        tokio::time::timeout(Duration::from_secs(60), watching)
            .await
            .expect("the first failure wakes a watcher")
            .expect("the watcher ran");
        // A watcher that has not looked since the failure is told at once.
        assert!(failures.unseen(false).now_or_never().is_some(), "a failure not seen yet waits");
        // One that has seen it waits on: looping over it (the health
        // service does) must not take a whole core.
        assert!(failures.unseen(true).now_or_never().is_none(), "a seen failure woke a watcher again");
        failures.fail("view sink", "later");
        assert!(failures.unseen(true).now_or_never().is_none(), "a later failure woke a watcher");
        assert_eq!(failures.first().as_deref(), Some("the archiver stopped: disk full"));
        // Whoever waits for the reason still gets it at once.
        assert_eq!(failures.failed().now_or_never().as_deref(), Some("the archiver stopped: disk full"));
    }
}
