//! Tearing a simulator cluster down when the command is interrupted.
//!
//! A cluster's `SimGuard` tears it down when dropped, but a signal ends the
//! process without running destructors. Commands that bring a cluster up
//! (`demo`, `bench ...`) call [`tear_down_on_signal`] right after, so Ctrl-C
//! (SIGINT) or a `kill` (SIGTERM) still leave nothing behind.

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
            eprintln!("\ninterrupted: tearing cluster {cluster} down");
            if let Err(e) = dpumesh_sim::down(&cluster) {
                eprintln!("dpumesh sim down -c {cluster}: {e}");
            }
            std::process::exit(code);
        });
}
