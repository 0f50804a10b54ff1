//! PID 1 of the Ferric ramdisk.
//!
//! The kernel panics when PID 1 exits, so [`run_forever`] never returns: every step runs
//! under [`retry_forever`], which logs errors and panics to the console and tries again
//! after a delay, reaping orphaned children while it waits. The steps: mount the kernel
//! filesystems, read the kernel command line, load drivers for the hardware present (by
//! modalias) and mount efivarfs, configure the network by DHCP (loading drivers for NICs
//! that appear late), then run and keep restarting the agent while renewing the leases.
//!
//! Deliberately small (no async runtime, no logging framework): the ramdisk's size matters.

use std::error::Error;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes one line to the console (PID 1's stderr), prefixed `ferric-init: `.
/// Write errors are ignored: PID 1 must not panic because the console is gone.
/// Defined before the modules so that they all see it.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "ferric-init: {}", format_args!($($arg)*));
    }};
}

pub mod cmdline;
pub mod dhcp;
pub mod drivers;
pub mod glob;
pub mod modindex;
pub mod mounts;
pub mod netif;
pub mod network;
pub mod supervise;

use cmdline::BootParams;

/// Pause between attempts of a failed step.
const RETRY_DELAY: Duration = Duration::from_secs(5);

/// The whole PID 1 sequence, restarted from the top should anything escape the
/// per-step retries. Never returns.
pub fn run_forever() -> ! {
    loop {
        // run_sequence never returns, so only its panic can come back.
        let Err(panic) = catch_unwind(run_sequence);
        log!("init sequence panicked: {}; restarting it", panic_message(&*panic));
        supervise::sleep_reaping(RETRY_DELAY, &mut || {});
    }
}

fn run_sequence() -> ! {
    log!("starting");
    retry_forever("mount filesystems", RETRY_DELAY, || mounts::mount_all(Path::new("/")));
    let params = retry_forever("read kernel command line", RETRY_DELAY, || {
        std::fs::read_to_string("/proc/cmdline").map(|text| cmdline::parse(&text))
    });
    log_boot_params(&params);
    let mut hardware =
        retry_forever("load drivers", RETRY_DELAY, || drivers::HardwareDrivers::load_present(Path::new("/")));
    mounts::mount_efivarfs(Path::new("/"));
    let config = network::NetworkConfig::new(&params);
    let leases =
        retry_forever("configure network", RETRY_DELAY, || network::configure(&config, &mut || hardware.load_new()));
    let mut lease_keeper = network::LeaseKeeper::new(config, leases);
    supervise::run_agent_forever(&params, &mut || {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| lease_keeper.maintain(Instant::now()))) {
            log!("lease maintenance panicked: {}", panic_message(&*panic));
        }
    })
}

fn log_boot_params(params: &BootParams) {
    match &params.api_url {
        Some(url) => log!("controller API: {url}"),
        None => log!("no {}= on the kernel command line", ferric_protocol::CMDLINE_API_URL),
    }
    match (&params.boot_mac, &params.malformed_bootif) {
        (Some(mac), _) => log!("boot NIC: {mac}"),
        (None, Some(raw)) => log!("ignoring malformed {}={raw}", ferric_protocol::CMDLINE_BOOTIF),
        (None, None) => log!("no {}=; using every NIC with carrier", ferric_protocol::CMDLINE_BOOTIF),
    }
}

/// Runs `step` until it succeeds, logging each error or panic and waiting `delay`
/// (reaping zombies) before the next attempt.
pub fn retry_forever<T, E: Error>(name: &str, delay: Duration, mut step: impl FnMut() -> Result<T, E>) -> T {
    loop {
        match catch_unwind(AssertUnwindSafe(&mut step)) {
            Ok(Ok(value)) => return value,
            Ok(Err(error)) => log!("{name} failed: {}; retrying in {}s", error_chain(&error), delay.as_secs()),
            Err(panic) => log!("{name} panicked: {}; retrying in {}s", panic_message(&*panic), delay.as_secs()),
        }
        supervise::sleep_reaping(delay, &mut || {});
    }
}

pub use ferric_runner::error_chain;

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "unknown panic"
    }
}

/// Tests that reap (waitpid(-1)) or wait for children hold this, so they do not steal
/// each other's children.
#[cfg(test)]
pub(crate) static REAPING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn retry_forever_survives_errors_and_panics() {
        let _no_concurrent_children = REAPING.lock();
        let attempts = Cell::new(0);
        let value = retry_forever("flaky", Duration::ZERO, || {
            attempts.set(attempts.get() + 1);
            match attempts.get() {
                1 => Err(std::io::Error::other("first attempt fails")),
                2 => panic!("second attempt panics"),
                _ => Ok(42),
            }
        });
        assert_eq!((value, attempts.get()), (42, 3));
    }

    #[test]
    fn error_chain_joins_sources() {
        let error = drivers::InsertError::Init { path: "/m/x.ko".into(), source: nix::errno::Errno::ENOEXEC };
        assert_eq!(error_chain(&error), format!("finit_module(/m/x.ko) failed: {}", nix::errno::Errno::ENOEXEC));
    }
}
