//! OpenIPMI's `ipmi_sim` as a node's BMC: a real IPMI 1.5/2.0 LAN server on 127.0.0.1 whose chassis
//! is a generated shell script. The chassis either keeps the power state and boot device in files,
//! or powers a QEMU VM: power-on starts QEMU daemonized with the arguments for the boot device the
//! BMC was last given, power-off kills it, and the power reads on only while QEMU runs, so a guest
//! that powers itself off reads as off. Every call the simulator makes to the chassis is logged
//! (`get power`, `set power 1`, `set boot pxe`, ...) so that tests can assert what the BMC was asked.
//!
//! What ipmi_sim does with the requests (OpenIPMI 1.0.13, `lanserv/bmc_chassis.c`): `power on|off`
//! become `set power 1|0`, `power reset` becomes `set reset 1`, `power cycle` becomes `set power 0`
//! then `set power 1` a second later, `power soft` becomes `set shutdown 1`. A boot device becomes
//! `set boot none|pxe|default|cdrom|bios` (`default` is the disk; "safe" is refused); the
//! persistence and EFI flags are dropped, and reading the boot flags always reports a one-time
//! legacy override of the device the chassis reports.
//!
//! The LAN parameters (`ipmitool lan print`, or the Get LAN Configuration Parameters command a host
//! sends in band) come from a generated `lan_config_program` that reports the LAN channel's own
//! address: 127.0.0.1 and [`LAN_MAC`]. When the VM's spec names a BMC port, ipmi_sim also listens there
//! for QEMU's `ipmi-bmc-extern` (`serial kcs ... codec VM`): the guest then has a KCS system interface
//! to this same BMC, and reads those parameters through /dev/ipmi0 as an agent on a server does.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ferric_controller::model::JsonObject;
use ferric_runner::{tail_lines, CommandError};
use serde_json::json;

use crate::controller::free_loopback_port;
use crate::path_io::PathIoError;
use crate::vm::{self, BootFirst, VmSpec};

pub const ADDRESS: &str = "127.0.0.1";
pub const USERNAME: &str = "admin";
/// The MAC address the BMC reports for its LAN channel (locally administered).
pub const LAN_MAC: &str = "02:fe:00:00:00:01";
/// How long ipmi_sim may take to answer `mc info` after start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// One readiness probe: ipmitool with a single retry gives up after about 2 s.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const LOG_TAIL_LINES: usize = 30;
/// The simulated BMC's name: ipmi_sim keeps its persistent state under `<state dir>/ipmi_sim/<name>`.
const BMC_NAME: &str = "ferric";

#[derive(Debug, thiserror::Error)]
pub enum IpmiSimError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("cannot find a free port on 127.0.0.1")]
    FreePort(#[source] io::Error),
    #[error("waiting for ipmi_sim failed")]
    Wait(#[source] io::Error),
    #[error("ipmi_sim exited ({status}) during startup (it reports configuration errors to syslog only); its output:\n{log_tail}")]
    ExitedDuringStartup { status: ExitStatus, log_tail: String },
    #[error("ipmi_sim on 127.0.0.1:{port} did not answer `mc info` within {timeout:?}; ipmitool said: {probe}")]
    StartupTimeout { port: u16, timeout: Duration, probe: String },
    #[error(
        "VM of the simulated BMC: {pattern:?} not on the serial console after {timeout:?}; last serial lines:\n{tail}"
    )]
    SerialTimeout { pattern: String, timeout: Duration, tail: String },
    #[error("the simulated BMC has no VM")]
    NoVm,
}

/// A QEMU VM as the simulated BMC's chassis. The chassis adds `-daemonize`, `-pidfile` and a monitor
/// (for ACPI shutdown requests) to the arguments.
#[derive(Debug, Clone)]
pub struct ChassisVm {
    /// QEMU's arguments when the BMC's boot device is PXE.
    pub network_boot_args: Vec<String>,
    /// QEMU's arguments for every other boot device (disk, no override, CD, BIOS setup).
    pub disk_boot_args: Vec<String>,
    /// Where the arguments send the guest's serial console.
    pub serial_log: PathBuf,
    /// The port of 127.0.0.1 the VM's in-band BMC interface connects to ([`VmSpec::ipmi_bmc_port`]).
    pub bmc_port: Option<u16>,
}

impl ChassisVm {
    /// The VM of `spec` as [`vm::Vm`] would run it, UEFI or BIOS as `spec.firmware` says (under UEFI
    /// with its OVMF variable store copied into `spec.work_dir` now and kept across power cycles), and
    /// one serial log for all its boots: the NIC boots first when the BMC says PXE, the disks otherwise.
    pub fn new(spec: &VmSpec) -> Result<ChassisVm, IpmiSimError> {
        spec.prepare_firmware()?;
        let serial_log = spec.work_dir.join(format!("{}-serial.log", spec.name));
        if serial_log.exists() {
            fs::remove_file(&serial_log).map_err(PathIoError::at("remove", &serial_log))?;
        }
        Ok(ChassisVm {
            network_boot_args: vm::qemu_argv(spec, &serial_log, BootFirst::Network),
            disk_boot_args: vm::qemu_argv(spec, &serial_log, BootFirst::Disk),
            serial_log,
            bmc_port: spec.ipmi_bmc_port,
        })
    }
}

/// A running ipmi_sim (and the VM it powers, if any); both are killed on drop.
pub struct IpmiSim {
    child: Child,
    port: u16,
    password: String,
    work_dir: PathBuf,
    log_path: PathBuf,
    vm_serial_log: Option<PathBuf>,
}

impl IpmiSim {
    /// Starts ipmi_sim on a free UDP port of 127.0.0.1 with its configuration, state, chassis and
    /// logs in `work_dir` (all reset: the chassis starts powered off, without a boot override), and
    /// waits until it answers. With `vm`, the chassis powers that VM (and ipmi_sim serves its in-band
    /// interface, if it has one); without, it keeps state files.
    pub fn start(work_dir: &Path, vm: Option<ChassisVm>) -> Result<IpmiSim, IpmiSimError> {
        // Only what the simulator keeps: the directory may hold the VM's files too.
        let state_dir = work_dir.join("state");
        if state_dir.exists() {
            fs::remove_dir_all(&state_dir).map_err(PathIoError::at("remove", &state_dir))?;
        }
        fs::create_dir_all(&state_dir).map_err(PathIoError::at("create directory", &state_dir))?;
        let pid_file = work_dir.join("qemu.pid");
        if pid_file.exists() {
            fs::remove_file(&pid_file).map_err(PathIoError::at("remove", &pid_file))?;
        }
        // IPMI 1.5's maximum length (16), distinctive enough to search messages for.
        let password = format!("ferric-{}", &uuid::Uuid::new_v4().simple().to_string()[..9]);
        let chassis = work_dir.join("chassis");
        let monitor_port = free_loopback_port().map_err(IpmiSimError::FreePort)?;
        write_file(&chassis, &chassis_script(work_dir, vm.as_ref(), monitor_port))?;
        make_executable(&chassis)?;
        let lan_program = work_dir.join("lan-config");
        write_file(&lan_program, &lan_config_script())?;
        make_executable(&lan_program)?;
        if vm.is_none() {
            write_file(&work_dir.join("power"), "0\n")?;
        }
        write_file(&work_dir.join("boot"), "none\n")?;
        write_file(&work_dir.join("chassis.log"), "")?;
        write_file(&work_dir.join("qemu.log"), "")?;
        // mc_setbmc: without it ipmi_sim exits at once ("No bmc_ipmb specified", to syslog only).
        let emu =
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n";
        write_file(&work_dir.join("node.emu"), emu)?;
        let bmc_port = vm.as_ref().and_then(|vm| vm.bmc_port);
        let vm_serial_log = vm.map(|vm| vm.serial_log);
        match IpmiSim::start_on_free_port(work_dir, &password, vm_serial_log.clone(), bmc_port) {
            Err(IpmiSimError::ExitedDuringStartup { .. }) => {
                tracing::warn!("ipmi_sim exited during startup, perhaps its port was taken; retrying on another");
                IpmiSim::start_on_free_port(work_dir, &password, vm_serial_log, bmc_port)
            }
            result => result,
        }
    }

    fn start_on_free_port(
        work_dir: &Path,
        password: &str,
        vm_serial_log: Option<PathBuf>,
        bmc_port: Option<u16>,
    ) -> Result<IpmiSim, IpmiSimError> {
        let port = free_udp_port().map_err(IpmiSimError::FreePort)?;
        let config = work_dir.join("lan.conf");
        let programs = LanPrograms { chassis: &work_dir.join("chassis"), lan_config: &work_dir.join("lan-config") };
        write_file(&config, &lan_config(port, password, &programs, bmc_port))?;
        let log_path = work_dir.join("ipmi_sim.log");
        let log = fs::File::create(&log_path).map_err(PathIoError::at("create", &log_path))?;
        let log_stderr = log.try_clone().map_err(PathIoError::at("duplicate the handle of", &log_path))?;
        let mut cmd = Command::new("ipmi_sim");
        cmd.arg("-c")
            .arg(&config)
            .arg("-f")
            .arg(work_dir.join("node.emu"))
            .arg("-s")
            .arg(work_dir.join("state"))
            .arg("-n")
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_stderr);
        let child = ferric_runner::spawn(format!("start ipmi_sim on 127.0.0.1:{port}"), &mut cmd)?;
        let mut sim = IpmiSim {
            child,
            port,
            password: password.to_owned(),
            work_dir: work_dir.to_path_buf(),
            log_path,
            vm_serial_log,
        };
        sim.wait_until_ready()?;
        Ok(sim)
    }

    pub fn address(&self) -> &'static str {
        ADDRESS
    }

    /// The UDP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn username(&self) -> &'static str {
        USERNAME
    }

    /// The admin user's password, fresh for every simulator.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `driver_info` for Ironic's `ipmi` hardware type (IPMI 2.0, ADMINISTRATOR, cipher suite 3).
    pub fn driver_info(&self) -> JsonObject {
        let mut info = JsonObject::new();
        info.insert("ipmi_address".into(), json!(ADDRESS));
        info.insert("ipmi_port".into(), json!(self.port));
        info.insert("ipmi_username".into(), json!(USERNAME));
        info.insert("ipmi_password".into(), json!(self.password));
        info
    }

    /// Every call ipmi_sim made to the chassis, oldest first: `get power`, `set power 1`, ...
    pub fn chassis_log(&self) -> Vec<String> {
        self.read("chassis.log").lines().map(str::to_owned).collect()
    }

    /// The chassis calls that changed something (`set ...`), oldest first.
    pub fn chassis_settings(&self) -> Vec<String> {
        self.chassis_log().into_iter().filter(|call| call.starts_with("set ")).collect()
    }

    /// Whether the chassis is on, by its own state (the power file, or whether QEMU runs), not IPMI.
    pub fn chassis_power(&self) -> bool {
        match self.vm_serial_log {
            None => self.read("power").trim() == "1",
            Some(_) => self.vm_pid().is_some(),
        }
    }

    /// The boot device ipmi_sim last gave the chassis: `none`, `pxe`, `default` (the disk), `cdrom` or `bios`.
    pub fn chassis_boot_device(&self) -> String {
        self.read("boot").trim().to_owned()
    }

    /// The VM's QEMU process while it runs.
    pub fn vm_pid(&self) -> Option<u32> {
        let pid: u32 = self.read("qemu.pid").trim().parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        // Field 3, after the parenthesised command name, is the state; a zombie has exited.
        let state = stat.rsplit_once(") ")?.1.split_whitespace().next()?;
        (state != "Z" && String::from_utf8_lossy(&cmdline).contains("qemu")).then_some(pid)
    }

    /// Everything the VM's guest wrote to its serial port, across power cycles.
    pub fn serial_log(&self) -> Result<String, IpmiSimError> {
        let path = self.vm_serial_log.as_ref().ok_or(IpmiSimError::NoVm)?;
        Ok(fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default())
    }

    /// Waits until `pattern` appears on the VM's serial console; returns how long that took.
    pub fn wait_for_serial(&self, pattern: &str, timeout: Duration) -> Result<Duration, IpmiSimError> {
        let started = Instant::now();
        loop {
            let serial = self.serial_log()?;
            if serial.contains(pattern) {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                let tail = tail_lines(&serial, vm::SERIAL_TAIL_LINES);
                return Err(IpmiSimError::SerialTimeout { pattern: pattern.to_owned(), timeout, tail });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What QEMU printed on each start of the VM (argument errors), with the chassis' notes.
    pub fn qemu_log(&self) -> String {
        self.read("qemu.log")
    }

    /// ipmi_sim's own output (little: it reports errors to syslog).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn log_tail(&self) -> String {
        tail_lines(&fs::read_to_string(&self.log_path).unwrap_or_default(), LOG_TAIL_LINES)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops ipmi_sim (SIGSTOP): datagrams are queued by the kernel but never answered, like a hung BMC.
    pub fn freeze(&self) -> Result<(), IpmiSimError> {
        signal(self.pid(), "STOP", "ipmi_sim")
    }

    /// Continues a frozen ipmi_sim (SIGCONT).
    pub fn thaw(&self) -> Result<(), IpmiSimError> {
        signal(self.pid(), "CONT", "ipmi_sim")
    }

    /// Kills the VM, if it runs, and ipmi_sim (idempotent).
    pub fn stop(&mut self) -> Result<(), IpmiSimError> {
        if let Some(pid) = self.vm_pid() {
            signal(pid, "KILL", "the VM's QEMU")?;
        }
        if self.child.try_wait().map_err(IpmiSimError::Wait)?.is_none() {
            // An error here means it exited meanwhile; `wait` reaps it either way.
            let _ = self.child.kill();
            self.child.wait().map_err(IpmiSimError::Wait)?;
        }
        Ok(())
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.work_dir.join(name)).unwrap_or_default()
    }

    fn wait_until_ready(&mut self) -> Result<(), IpmiSimError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(IpmiSimError::Wait)? {
                return Err(IpmiSimError::ExitedDuringStartup { status, log_tail: self.log_tail() });
            }
            let probe = ferric_runner::run_with_timeout(
                format!("ask ipmi_sim on 127.0.0.1:{} for its MC info", self.port),
                Command::new("ipmitool")
                    .args(["-I", "lanplus", "-C", "3", "-H", ADDRESS, "-p", &self.port.to_string()])
                    .args(["-U", USERNAME, "-E", "-R", "1", "-N", "1", "mc", "info"])
                    .env("IPMI_PASSWORD", &self.password),
                PROBE_TIMEOUT,
            );
            match probe {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() >= deadline => {
                    return Err(IpmiSimError::StartupTimeout {
                        port: self.port,
                        timeout: STARTUP_TIMEOUT,
                        probe: err.to_string(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(error = %err, "could not stop ipmi_sim or its VM");
        }
    }
}

fn signal(pid: u32, signal: &str, what: &str) -> Result<(), IpmiSimError> {
    ferric_runner::run(
        format!("send SIG{signal} to {what}"),
        Command::new("kill").args(["-s", signal, &pid.to_string()]),
    )?;
    Ok(())
}

/// A UDP port of 127.0.0.1 free a moment ago.
fn free_udp_port() -> io::Result<u16> {
    Ok(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn write_file(path: &Path, contents: &str) -> Result<(), PathIoError> {
    fs::write(path, contents).map_err(PathIoError::at("write", path))
}

fn make_executable(path: &Path) -> Result<(), PathIoError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(PathIoError::at("make executable", path))
}

/// The programs ipmi_sim runs: the chassis, and the source of the LAN channel's parameters.
struct LanPrograms<'a> {
    chassis: &'a Path,
    lan_config: &'a Path,
}

/// lan.conf: one LAN channel on 127.0.0.1:`port` offering IPMI 1.5 and 2.0, one admin user, and with
/// `bmc_port` the system interface a VM's `ipmi-bmc-extern` connects to (the VM codec, at the BMC's IPMB
/// address).
fn lan_config(port: u16, password: &str, programs: &LanPrograms, bmc_port: Option<u16>) -> String {
    let mut config = format!(
        "name \"{BMC_NAME}\"\n\
         set_working_mc 0x20\n\
         \x20 startlan 1\n\
         \x20   addr {ADDRESS} {port}\n\
         \x20   priv_limit admin\n\
         \x20   allowed_auths_callback none md2 md5 straight\n\
         \x20   allowed_auths_user none md2 md5 straight\n\
         \x20   allowed_auths_operator none md2 md5 straight\n\
         \x20   allowed_auths_admin none md2 md5 straight\n\
         \x20   lan_config_program \"{}\"\n\
         \x20   guid a123456789abcdefa123456789abcdef\n\
         \x20 endlan\n\
         \x20 chassis_control \"{}\"\n\
         \x20 user 2 true \"{USERNAME}\" \"{password}\" admin 10 none md2 md5 straight\n",
        programs.lan_config.display(),
        programs.chassis.display()
    );
    if let Some(bmc_port) = bmc_port {
        config.push_str(&format!("  serial kcs {ADDRESS} {bmc_port} codec VM ipmb 0x20\n"));
    }
    config
}

/// The `lan_config_program`: ipmi_sim runs it as `lan-config get ip_addr ip_addr_src mac_addr ...`
/// and reads `name:value` lines; `set` and `check` (from Set LAN Configuration Parameters) change nothing.
fn lan_config_script() -> String {
    format!(
        "#!/bin/sh\n\
         # The LAN parameters of a simulated BMC, generated by ferric-tests' ipmi_sim harness.\n\
         [ \"$1\" = get ] || exit 0\n\
         shift\n\
         for parm in \"$@\"; do\n\
         \x20   case \"$parm\" in\n\
         \x20   ip_addr) echo \"ip_addr:{ADDRESS}\" ;;\n\
         \x20   ip_addr_src) echo \"ip_addr_src:static\" ;;\n\
         \x20   mac_addr) echo \"mac_addr:{LAN_MAC}\" ;;\n\
         \x20   subnet_mask) echo \"subnet_mask:255.0.0.0\" ;;\n\
         \x20   *_mac_addr) echo \"$parm:00:00:00:00:00:00\" ;;\n\
         \x20   *) echo \"$parm:0.0.0.0\" ;;\n\
         \x20   esac\n\
         done\n"
    )
}

/// Quotes `text` for the shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The chassis program ipmi_sim runs as `chassis get power|boot` (answering `power:0|1`,
/// `boot:<device>`) and `chassis set power 0|1|reset 1|shutdown 1|boot <device>`. It must answer
/// within about a second: ipmitool retries after one, and ipmi_sim then runs it twice.
fn chassis_script(work_dir: &Path, vm: Option<&ChassisVm>, monitor_port: u16) -> String {
    let mut script = format!(
        "#!/bin/bash\n\
         # The chassis of a simulated BMC, generated by ferric-tests' ipmi_sim harness.\n\
         dir={}\n\
         echo \"$*\" >> \"$dir/chassis.log\"\n",
        shell_quote(&work_dir.display().to_string())
    );
    match vm {
        None => script.push_str(
            "power() { cat \"$dir/power\"; }\n\
             power_on() { echo 1 > \"$dir/power\"; }\n\
             power_off() { echo 0 > \"$dir/power\"; }\n\
             # A reset keeps the power state.\n\
             reset() { :; }\n\
             # The simulated OS honours an ACPI shutdown request at once.\n\
             shutdown() { power_off; }\n",
        ),
        Some(vm) => {
            let quoted = |args: &[String]| args.iter().map(|arg| shell_quote(arg)).collect::<Vec<_>>().join(" ");
            script.push_str(&format!(
                "network_boot_args=({})\n\
                 disk_boot_args=({})\n\
                 monitor_port={monitor_port}\n",
                quoted(&vm.network_boot_args),
                quoted(&vm.disk_boot_args)
            ));
            script.push_str(
                "pidfile=$dir/qemu.pid\n\
                 # QEMU removes its pid file when it exits; a zombie or a reused pid is not our VM.\n\
                 running() {\n\
                 \x20   pid=$(cat \"$pidfile\" 2>/dev/null) && [ -n \"$pid\" ] || return 1\n\
                 \x20   state=$(cut -d' ' -f3 \"/proc/$pid/stat\" 2>/dev/null) && [ -n \"$state\" ] && [ \"$state\" != Z ] \\\n\
                 \x20       && grep -q qemu \"/proc/$pid/cmdline\"\n\
                 }\n\
                 power() { if running; then echo 1; else echo 0; fi; }\n\
                 power_on() {\n\
                 \x20   running && return 0\n\
                 \x20   rm -f \"$pidfile\"\n\
                 \x20   boot=$(cat \"$dir/boot\")\n\
                 \x20   if [ \"$boot\" = pxe ]; then args=(\"${network_boot_args[@]}\"); else args=(\"${disk_boot_args[@]}\"); fi\n\
                 \x20   echo \"$(date +%T.%N) power on, boot device $boot\" >> \"$dir/qemu.log\"\n\
                 \x20   qemu-system-x86_64 \"${args[@]}\" -monitor \"tcp:127.0.0.1:$monitor_port,server=on,wait=off\" \\\n\
                 \x20       -daemonize -pidfile \"$pidfile\" < /dev/null >> \"$dir/qemu.log\" 2>&1\n\
                 }\n\
                 power_off() {\n\
                 \x20   running || return 0\n\
                 \x20   echo \"$(date +%T.%N) power off\" >> \"$dir/qemu.log\"\n\
                 \x20   kill \"$pid\"\n\
                 \x20   for _ in $(seq 50); do running || return 0; sleep 0.01; done\n\
                 \x20   kill -9 \"$pid\"\n\
                 }\n\
                 reset() { running || return 0; power_off; power_on; }\n\
                 # The ACPI power button, through QEMU's monitor; the guest decides what to do with it.\n\
                 shutdown() {\n\
                 \x20   running || return 0\n\
                 \x20   echo \"$(date +%T.%N) ACPI shutdown request\" >> \"$dir/qemu.log\"\n\
                 \x20   exec 3<> \"/dev/tcp/127.0.0.1/$monitor_port\" || return 1\n\
                 \x20   echo system_powerdown >&3\n\
                 \x20   sleep 0.2\n\
                 \x20   exec 3>&-\n\
                 }\n",
            );
        }
    }
    script.push_str(
        "case \"$1\" in\n\
         get)\n\
         \x20   shift\n\
         \x20   for item in \"$@\"; do\n\
         \x20       case \"$item\" in\n\
         \x20       power) echo \"power:$(power)\" ;;\n\
         \x20       boot) echo \"boot:$(cat \"$dir/boot\")\" ;;\n\
         \x20       esac\n\
         \x20   done ;;\n\
         set)\n\
         \x20   shift\n\
         \x20   while [ $# -ge 2 ]; do\n\
         \x20       case \"$1\" in\n\
         \x20       power) if [ \"$2\" = 1 ]; then power_on; else power_off; fi ;;\n\
         \x20       reset) reset ;;\n\
         \x20       shutdown) shutdown ;;\n\
         \x20       boot) echo \"$2\" > \"$dir/boot\" ;;\n\
         \x20       esac\n\
         \x20       shift 2\n\
         \x20   done ;;\n\
         esac\n",
    );
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        let quoted = shell_quote("it's a file,x");
        let out = ferric_runner::run("echo", Command::new("sh").args(["-c", &format!("printf %s {quoted}")])).unwrap();
        assert_eq!(out.stdout, "it's a file,x");
    }

    #[test]
    fn the_state_chassis_keeps_power_and_boot_and_logs_each_call() {
        let dir = tempfile::tempdir().unwrap();
        let chassis = dir.path().join("chassis");
        write_file(&chassis, &chassis_script(dir.path(), None, 0)).unwrap();
        make_executable(&chassis).unwrap();
        write_file(&dir.path().join("power"), "0\n").unwrap();
        write_file(&dir.path().join("boot"), "none\n").unwrap();
        let call = |args: &[&str]| ferric_runner::run("chassis", Command::new(&chassis).args(args)).unwrap().stdout;
        assert_eq!(call(&["get", "power", "boot"]), "power:0\nboot:none\n");
        call(&["set", "power", "1"]);
        call(&["set", "boot", "pxe"]);
        assert_eq!(call(&["get", "power", "boot"]), "power:1\nboot:pxe\n");
        call(&["set", "shutdown", "1"]);
        assert_eq!(call(&["get", "power"]), "power:0\n");
        let log = fs::read_to_string(dir.path().join("chassis.log")).unwrap();
        assert_eq!(log, "get power boot\nset power 1\nset boot pxe\nget power boot\nset shutdown 1\nget power\n");
    }

    #[test]
    fn the_lan_program_reports_the_lan_channels_address() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("lan-config");
        write_file(&program, &lan_config_script()).unwrap();
        make_executable(&program).unwrap();
        let get = ferric_runner::run(
            "lan-config get",
            Command::new(&program).args(["get", "ip_addr", "ip_addr_src", "mac_addr", "subnet_mask"]),
        );
        assert_eq!(
            get.unwrap().stdout,
            format!("ip_addr:127.0.0.1\nip_addr_src:static\nmac_addr:{LAN_MAC}\nsubnet_mask:255.0.0.0\n")
        );
        let gateways = ferric_runner::run(
            "lan-config get gateways",
            Command::new(&program).args(["get", "default_gw_ip_addr", "backup_gw_mac_addr"]),
        );
        assert_eq!(gateways.unwrap().stdout, "default_gw_ip_addr:0.0.0.0\nbackup_gw_mac_addr:00:00:00:00:00:00\n");
        let set = ferric_runner::run("lan-config set", Command::new(&program).args(["set", "ip_addr", "10.0.0.1"]));
        assert_eq!(set.unwrap().stdout, "");
    }

    #[test]
    fn lan_conf_serves_the_vms_system_interface_only_when_it_has_one() {
        let programs = LanPrograms { chassis: Path::new("/w/chassis"), lan_config: Path::new("/w/lan-config") };
        let without = lan_config(6230, "pw", &programs, None);
        assert!(without.contains("  addr 127.0.0.1 6230\n"), "{without}");
        assert!(without.contains("lan_config_program \"/w/lan-config\"\n"), "{without}");
        assert!(without.contains("chassis_control \"/w/chassis\"\n"), "{without}");
        assert!(!without.contains("serial"), "{without}");
        let with = lan_config(6230, "pw", &programs, Some(9002));
        assert_eq!(with, format!("{without}  serial kcs 127.0.0.1 9002 codec VM ipmb 0x20\n"));
    }

    #[test]
    fn the_vm_chassis_has_both_argument_lists_and_the_monitor() {
        let vm = ChassisVm {
            network_boot_args: vec!["-name".into(), "n'1".into()],
            disk_boot_args: vec!["-boot".into(), "c d".into()],
            serial_log: "/w/serial.log".into(),
            bmc_port: None,
        };
        let script = chassis_script(Path::new("/w/sim"), Some(&vm), 4444);
        assert!(script.contains("network_boot_args=('-name' 'n'\\''1')"), "{script}");
        assert!(script.contains("disk_boot_args=('-boot' 'c d')"), "{script}");
        assert!(script.contains("monitor_port=4444") && script.contains("dir='/w/sim'"), "{script}");
        let syntax = ferric_runner::run("check the chassis script", Command::new("bash").args(["-n", "-c", &script]));
        assert!(syntax.is_ok(), "{syntax:?}");
    }
}
