//! `/init` of the Ferric ramdisk. Takes no arguments: everything comes from the kernel
//! command line.

fn main() {
    // Mounting, reconfiguring the network and reaping are only right for PID 1.
    if std::process::id() != 1 {
        eprintln!("ferric-init: must run as PID 1 (the ramdisk's /init)");
        std::process::exit(2);
    }
    ferric_init::run_forever()
}
