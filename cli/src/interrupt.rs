//! Tearing a simulator cluster down when the command is interrupted.
//!
//! A cluster's `SimGuard` tears it down when dropped, but a signal ends the
//! process without running destructors. Commands that bring a cluster up
//! (`demo`, `bench ...`) call [`tear_down_on_signal`] right after, so Ctrl-C
//! (SIGINT) or a `kill` (SIGTERM) still leave nothing behind.
//!
//! The teardown kills the cluster's processes, so the command's own work
//! usually fails a moment later (a load generator dies, a socket closes).
//! `main` calls [`wait_if_interrupted`] before it reports any result, so the
//! exit status is the signal's (130 / 143), never that follow-on error.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// If a signal has started a teardown, blocks until that teardown exits the
/// process; otherwise returns at once.
pub fn wait_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::park_timeout(std::time::Duration::from_secs(1));
    }
}

/// Watches for SIGINT and SIGTERM on a thread of its own; on either, runs
/// `dpumesh sim down -c <cluster>` and exits with 128 + the signal number
/// (130 / 143, as a shell reports it).
pub fn tear_down_on_signal(cluster: String) {
    let _ = std::thread::Builder::new()
        .name("teardown-on-signal".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let code = rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return None;
                };
                tokio::select! {
                    _ = int.recv() => Some(130),
                    _ = term.recv() => Some(143),
                }
            });
            let Some(code) = code else { return };
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\ninterrupted: tearing cluster {cluster} down");
            if let Err(e) = dpumesh_sim::down(&cluster) {
                eprintln!("dpumesh sim down -c {cluster}: {e}");
            }
            std::process::exit(code);
        });
}
