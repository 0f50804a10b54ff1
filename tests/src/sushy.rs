//! The sushy-tools Redfish emulator (`sushy-emulator` from the repository's `.venv`) with its fake
//! systems driver: no libvirt, power and boot state kept in its state directory. Optionally behind
//! basic authentication and TLS with a CA of its own, so that a driver's `redfish_verify_ca` can be
//! tested.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ferric_controller::bmc::PowerState;
use ferric_controller::model::JsonObject;
use ferric_runner::{tail_lines, CommandError};
use serde_json::{json, Value};

use crate::controller::free_loopback_port;
use crate::path_io::PathIoError;
use crate::paths::{self, PathError};

/// How long the emulator may take to answer `GET /redfish/v1/` after start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many emulator log lines an error shows.
const LOG_TAIL_LINES: usize = 30;
/// How Werkzeug reports a taken port.
const ADDRESS_IN_USE: &str = "Address already in use";
/// bcrypt cost of the htpasswd entry: sushy checks it on every request, and 4 is the cheapest.
const BCRYPT_ROUNDS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum SushyError {
    #[error("sushy-emulator not found at {path}: run scripts/setup.sh")]
    NotInstalled { path: PathBuf },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("cannot find a free port on 127.0.0.1")]
    FreePort(#[source] std::io::Error),
    #[error("cannot build the HTTP client that waits for sushy-emulator")]
    Probe(#[source] reqwest::Error),
    #[error("waiting for sushy-emulator failed")]
    Wait(#[source] std::io::Error),
    #[error("sushy-emulator exited ({status}) during startup; its log:\n{log_tail}")]
    ExitedDuringStartup { status: ExitStatus, log_tail: String },
    #[error("sushy-emulator did not answer GET {url} within {timeout:?}; its log:\n{log_tail}")]
    StartupTimeout { url: String, timeout: Duration, log_tail: String },
}

/// A NIC of a fake system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeNic {
    pub mac: String,
    pub ip: String,
}

/// One system of the fake driver (`SUSHY_EMULATOR_FAKE_SYSTEMS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSystem {
    /// Its Redfish id.
    pub uuid: String,
    pub name: String,
    pub power_state: PowerState,
    pub nics: Vec<FakeNic>,
}

impl FakeSystem {
    /// A system with a fresh UUID and one NIC whose MAC derives from it.
    pub fn new(name: &str, power_state: PowerState) -> FakeSystem {
        let uuid = uuid::Uuid::new_v4();
        let bytes = uuid.as_bytes();
        let mac = format!("52:54:00:{:02x}:{:02x}:{:02x}", bytes[0], bytes[1], bytes[2]);
        FakeSystem {
            uuid: uuid.to_string(),
            name: name.to_owned(),
            power_state,
            nics: vec![FakeNic { mac, ip: "127.0.0.10".to_owned() }],
        }
    }

    fn to_config(&self) -> Value {
        let power_state = match self.power_state {
            PowerState::On => "On",
            PowerState::Off => "Off",
        };
        let nics: Vec<Value> = self.nics.iter().map(|nic| json!({"mac": nic.mac, "ip": nic.ip})).collect();
        json!({"uuid": self.uuid, "name": self.name, "power_state": power_state, "nics": nics})
    }
}

/// Credentials the emulator demands (`SUSHY_EMULATOR_AUTH_FILE`) on every path but the service root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Default)]
pub struct SushyOptions {
    pub basic_auth: Option<BasicAuth>,
    /// Serve HTTPS with a certificate signed by a CA generated for this emulator.
    pub tls: bool,
    /// `SUSHY_EMULATOR_DISABLE_POWER_OFF`: ForceOff and GracefulShutdown are refused with 400.
    pub disable_power_off: bool,
}

/// A running `sushy-emulator` on a free loopback port; killed on drop.
#[derive(Debug)]
pub struct SushyEmulator {
    child: Child,
    base_url: String,
    system_ids: Vec<String>,
    basic_auth: Option<BasicAuth>,
    ca_cert: Option<PathBuf>,
    log_path: PathBuf,
}

impl SushyEmulator {
    /// Starts the emulator serving `systems`, with its config, state, certificates and log in
    /// `work_dir` (the state is reset: every start begins with `systems` as given).
    pub fn start(work_dir: &Path, systems: &[FakeSystem], options: &SushyOptions) -> Result<SushyEmulator, SushyError> {
        let binary = paths::repo_root().join(".venv").join("bin").join("sushy-emulator");
        if !binary.is_file() {
            return Err(SushyError::NotInstalled { path: binary });
        }
        let state_dir = work_dir.join("state");
        if state_dir.exists() {
            fs::remove_dir_all(&state_dir).map_err(PathIoError::at("remove", &state_dir))?;
        }
        fs::create_dir_all(&state_dir).map_err(PathIoError::at("create directory", &state_dir))?;
        let auth_file = options.basic_auth.as_ref().map(|auth| write_htpasswd(work_dir, auth)).transpose()?;
        let tls = if options.tls { Some(generate_certificates(work_dir)?) } else { None };
        let setup = Setup { binary, work_dir, state_dir, systems, options, auth_file, tls };
        match setup.start_on_free_port() {
            Err(SushyError::ExitedDuringStartup { log_tail, .. }) if log_tail.contains(ADDRESS_IN_USE) => {
                tracing::warn!("sushy-emulator's port was taken before it could bind; retrying on another");
                setup.start_on_free_port()
            }
            result => result,
        }
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The systems' Redfish ids (their UUIDs), in the order given.
    pub fn system_ids(&self) -> &[String] {
        &self.system_ids
    }

    /// `/redfish/v1/Systems/<id>`.
    pub fn system_path(system_id: &str) -> String {
        format!("/redfish/v1/Systems/{system_id}")
    }

    /// `driver_info` for Ironic's `redfish` hardware type pointing at one system: address, system
    /// path, the credentials if any, and the CA bundle as `redfish_verify_ca` when serving TLS.
    pub fn driver_info(&self, system_id: &str) -> JsonObject {
        let mut info = JsonObject::new();
        info.insert("redfish_address".into(), json!(self.base_url));
        info.insert("redfish_system_id".into(), json!(SushyEmulator::system_path(system_id)));
        if let Some(auth) = &self.basic_auth {
            info.insert("redfish_username".into(), json!(auth.username));
            info.insert("redfish_password".into(), json!(auth.password));
        }
        if let Some(ca_cert) = &self.ca_cert {
            info.insert("redfish_verify_ca".into(), json!(ca_cert));
        }
        info
    }

    /// The CA that signed the emulator's certificate, when serving TLS.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of the emulator's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        tail_lines(&log, LOG_TAIL_LINES)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process (SIGSTOP): connections are still accepted by the kernel but never answered,
    /// like a hung BMC.
    pub fn freeze(&self) -> Result<(), SushyError> {
        self.signal("STOP")
    }

    /// Continues a frozen emulator (SIGCONT).
    pub fn thaw(&self) -> Result<(), SushyError> {
        self.signal("CONT")
    }

    /// Kills the emulator now: its port then refuses connections.
    pub fn kill(&mut self) -> Result<(), SushyError> {
        self.child.kill().map_err(SushyError::Wait)?;
        self.child.wait().map_err(SushyError::Wait)?;
        Ok(())
    }

    fn signal(&self, signal: &str) -> Result<(), SushyError> {
        let pid = self.pid().to_string();
        ferric_runner::run(
            format!("send SIG{signal} to sushy-emulator"),
            Command::new("kill").args(["-s", signal, &pid]),
        )?;
        Ok(())
    }

    fn wait_until_ready(&mut self) -> Result<(), SushyError> {
        // Only liveness: whether the certificate verifies is what the tests ask the driver.
        let probe = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(SushyError::Probe)?;
        let url = format!("{}/redfish/v1/", self.base_url);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(SushyError::Wait)? {
                return Err(SushyError::ExitedDuringStartup { status, log_tail: self.log_tail() });
            }
            if probe.get(&url).send().is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SushyError::StartupTimeout { url, timeout: STARTUP_TIMEOUT, log_tail: self.log_tail() });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for SushyEmulator {
    fn drop(&mut self) {
        // SIGKILL also ends a frozen process; errors mean it already exited, and `wait` reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emulator's TLS files.
struct Certificates {
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// Everything one start attempt needs.
struct Setup<'a> {
    binary: PathBuf,
    work_dir: &'a Path,
    state_dir: PathBuf,
    systems: &'a [FakeSystem],
    options: &'a SushyOptions,
    auth_file: Option<PathBuf>,
    tls: Option<Certificates>,
}

impl Setup<'_> {
    fn start_on_free_port(&self) -> Result<SushyEmulator, SushyError> {
        let port = free_loopback_port().map_err(SushyError::FreePort)?;
        let config_path = self.work_dir.join("emulator.conf");
        fs::write(&config_path, self.config(port)).map_err(PathIoError::at("write", &config_path))?;
        let log_path = self.work_dir.join("sushy-emulator.log");
        let log = fs::File::create(&log_path).map_err(PathIoError::at("create", &log_path))?;
        let log_stderr = log.try_clone().map_err(PathIoError::at("duplicate the handle of", &log_path))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config").arg(&config_path).stdin(Stdio::null()).stdout(log).stderr(log_stderr);
        let child = ferric_runner::spawn("start sushy-emulator", &mut cmd)?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut emulator = SushyEmulator {
            child,
            base_url: format!("{scheme}://127.0.0.1:{port}"),
            system_ids: self.systems.iter().map(|system| system.uuid.clone()).collect(),
            basic_auth: self.options.basic_auth.clone(),
            ca_cert: self.tls.as_ref().map(|tls| tls.ca_cert.clone()),
            log_path,
        };
        emulator.wait_until_ready()?;
        Ok(emulator)
    }

    /// The config file: Python assignments, whose values JSON writes validly (strings, lists, dicts).
    fn config(&self, port: u16) -> String {
        let systems: Vec<Value> = self.systems.iter().map(FakeSystem::to_config).collect();
        let mut config = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
             SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_FAKE_DRIVER = True\n\
             SUSHY_EMULATOR_STATE_DIR = {}\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = {}\n",
            json!(self.state_dir),
            Value::Array(systems)
        );
        if let Some(auth_file) = &self.auth_file {
            config.push_str(&format!("SUSHY_EMULATOR_AUTH_FILE = {}\n", json!(auth_file)));
        }
        if let Some(tls) = &self.tls {
            config.push_str(&format!("SUSHY_EMULATOR_SSL_CERT = {}\n", json!(tls.server_cert)));
            config.push_str(&format!("SUSHY_EMULATOR_SSL_KEY = {}\n", json!(tls.server_key)));
        }
        if self.options.disable_power_off {
            config.push_str("SUSHY_EMULATOR_DISABLE_POWER_OFF = True\n");
        }
        config
    }
}

/// An Apache-style user file; sushy accepts only bcrypt entries, made with the venv's `bcrypt`.
fn write_htpasswd(work_dir: &Path, auth: &BasicAuth) -> Result<PathBuf, SushyError> {
    let python = paths::repo_root().join(".venv").join("bin").join("python3");
    let script = "import bcrypt, os, sys\n\
                  hashed = bcrypt.hashpw(os.environ['FERRIC_PASSWORD'].encode(), bcrypt.gensalt(int(sys.argv[1])))\n\
                  sys.stdout.write(hashed.decode())";
    let hashed = ferric_runner::run(
        "hash the emulator's password with bcrypt",
        Command::new(python).args(["-c", script, &BCRYPT_ROUNDS.to_string()]).env("FERRIC_PASSWORD", &auth.password),
    )?
    .stdout;
    let path = work_dir.join("htpasswd");
    fs::write(&path, format!("{}:{}\n", auth.username, hashed.trim())).map_err(PathIoError::at("write", &path))?;
    Ok(path)
}

/// A CA and a server certificate for 127.0.0.1 signed by it. A self-signed certificate alone will
/// not do: rustls (webpki) refuses a CA certificate as the server's own.
fn generate_certificates(work_dir: &Path) -> Result<Certificates, SushyError> {
    let tls_dir = work_dir.join("tls");
    fs::create_dir_all(&tls_dir).map_err(PathIoError::at("create directory", &tls_dir))?;
    let file = |name: &str| tls_dir.join(name);
    let (ca_key, ca_cert) = (file("ca.key"), file("ca.pem"));
    let (server_key, server_csr, server_cert) = (file("server.key"), file("server.csr"), file("server.pem"));
    let extensions = file("server.ext");
    fs::write(
        &extensions,
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n",
    )
    .map_err(PathIoError::at("write", &extensions))?;
    let ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    ferric_runner::run(
        "generate the emulator's test CA",
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec_key)
            .args(["-days", "7", "-subj", "/CN=Ferric test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_cert),
    )?;
    ferric_runner::run(
        "generate the emulator's key and certificate request",
        Command::new("openssl")
            .arg("req")
            .args(ec_key)
            .args(["-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(&server_key)
            .arg("-out")
            .arg(&server_csr),
    )?;
    ferric_runner::run(
        "sign the emulator's certificate with the test CA",
        Command::new("openssl")
            .args(["x509", "-req", "-days", "7", "-set_serial", "1"])
            .arg("-in")
            .arg(&server_csr)
            .arg("-CA")
            .arg(&ca_cert)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&extensions)
            .arg("-out")
            .arg(&server_cert),
    )?;
    Ok(Certificates { ca_cert, server_cert, server_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_systems_render_as_the_fake_driver_expects() {
        let system = FakeSystem::new("node-0", PowerState::On);
        let config = system.to_config();
        assert_eq!(config["uuid"], json!(system.uuid));
        assert_eq!(config["power_state"], json!("On"));
        assert_eq!(config["nics"][0]["mac"], json!(system.nics[0].mac));
        assert!(system.nics[0].mac.starts_with("52:54:00:"));
        assert_ne!(FakeSystem::new("node-1", PowerState::Off).uuid, system.uuid);
    }
}
