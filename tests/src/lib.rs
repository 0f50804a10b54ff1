//! Test harness for Ferric's end-to-end tests and demo: builds the deployable test OS and the ramdisk,
//! runs QEMU VMs (UEFI or BIOS, with disks of several kinds), the real controller binary, an image server
//! and simulated BMCs, drives the controller's Ironic-style API, and inspects the VMs' disk files.

pub mod baremetal;
pub mod controller;
pub mod demo;
pub mod disk;
pub mod disks;
pub mod image_server;
pub mod images;
pub mod ipmi_sim;
pub mod path_io;
pub mod paths;
pub mod ramdisk;
pub mod scenario;
pub mod sim_agent;
pub mod sushy;
pub mod testos;
pub mod vm;

/// Sends the harness's `tracing` output to the test's captured output (or stderr for the demo);
/// `RUST_LOG` overrides the default `info`. Safe to call more than once.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_test_writer().try_init();
}

/// `result`'s value, or a panic with the error and its whole chain of causes (for tests).
pub fn ok<T, E: std::error::Error>(result: Result<T, E>) -> T {
    result.unwrap_or_else(|error| panic!("{}", error_chain(&error)))
}

pub use ferric_runner::error_chain;
