//! The Redfish driver against the real sushy-tools emulator (fake systems driver, no libvirt),
//! through the BMC traits the conductor uses.
//!
//! Run: `cargo test -p ferric-tests --test bmc_redfish -- --test-threads=1` (add `--nocapture` for
//! the measured times).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferric_controller::bmc::redfish::RedfishBmc;
use ferric_controller::bmc::{
    BmcError, BmcSettings, BootDevice, BootDeviceSetting, ManagementInterface, PowerAction, PowerInterface, PowerState,
};
use ferric_controller::ipxe::BootMode;
use ferric_controller::model::JsonObject;
use ferric_tests::paths;
use ferric_tests::sushy::{BasicAuth, FakeSystem, SushyEmulator, SushyOptions};
use serde_json::{json, Value};

/// sushy's fake driver applies a power change 0-11 s late.
const POWER_TIMEOUT: Duration = Duration::from_secs(20);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
const PASSWORD: &str = "emulator-s3cret";

fn settings() -> BmcSettings {
    BmcSettings {
        power_timeout: POWER_TIMEOUT,
        command_timeout: COMMAND_TIMEOUT,
        min_command_interval: Duration::from_millis(100),
    }
}

fn work_dir(test: &str) -> PathBuf {
    paths::scratch_dir().expect("scratch dir").join("bmc_redfish").join(test)
}

fn start(test: &str, systems: &[FakeSystem], options: SushyOptions) -> SushyEmulator {
    ferric_tests::init_logging();
    SushyEmulator::start(&work_dir(test), systems, &options).unwrap_or_else(|err| panic!("{err}"))
}

fn driver(info: &JsonObject) -> RedfishBmc {
    RedfishBmc::from_driver_info(info, &settings()).unwrap_or_else(|err| panic!("{err}"))
}

fn with_auth() -> SushyOptions {
    SushyOptions {
        basic_auth: Some(BasicAuth { username: "admin".into(), password: PASSWORD.into() }),
        ..SushyOptions::default()
    }
}

/// Runs the async part of a test, failing it if it takes longer than `bound`.
fn within<F: Future<Output = ()>>(bound: Duration, test: F) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        if tokio::time::timeout(bound, test).await.is_err() {
            panic!("the test did not finish within {bound:?}");
        }
    });
}

/// Performs `action` and checks the state holds the moment it returns; prints the time taken.
async fn act(bmc: &RedfishBmc, action: PowerAction) -> Duration {
    let started = Instant::now();
    bmc.set_power_state(action, POWER_TIMEOUT).await.unwrap_or_else(|err| panic!("{action}: {err}"));
    let took = started.elapsed();
    assert_eq!(bmc.power_state().await.unwrap(), action.resulting_state(), "right after {action}");
    println!("{action}: returned after {:.1} s with the node {}", took.as_secs_f64(), action.resulting_state());
    took
}

async fn system_json(emulator: &SushyEmulator, system_id: &str) -> Value {
    let url = format!("{}{}", emulator.base_url(), SushyEmulator::system_path(system_id));
    reqwest::get(&url).await.unwrap().error_for_status().unwrap().json().await.unwrap()
}

#[test]
fn power_actions_return_once_the_late_power_change_holds() {
    let emulator = start("power", &[FakeSystem::new("node-0", PowerState::Off)], SushyOptions::default());
    let bmc = driver(&emulator.driver_info(&emulator.system_ids()[0]));
    within(Duration::from_secs(150), async {
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
        act(&bmc, PowerAction::On).await;
        // Already on: no reset, nothing to wait for.
        assert!(act(&bmc, PowerAction::On).await < Duration::from_secs(2));
        act(&bmc, PowerAction::Reboot).await;
        act(&bmc, PowerAction::Off).await;
        // Rebooting an off node powers it on.
        act(&bmc, PowerAction::Reboot).await;
        act(&bmc, PowerAction::SoftReboot).await;
        act(&bmc, PowerAction::SoftOff).await;
        act(&bmc, PowerAction::SoftReboot).await;
    });
    println!("emulator log: {}", emulator.log_path().display());
}

#[test]
fn a_power_change_later_than_the_timeout_is_a_power_timeout() {
    let emulator = start("power_timeout", &[FakeSystem::new("node-0", PowerState::Off)], SushyOptions::default());
    let bmc = driver(&emulator.driver_info(&emulator.system_ids()[0]));
    let timeout = Duration::from_millis(300);
    within(Duration::from_secs(60), async {
        // The emulator may apply a change after as little as a few milliseconds (its delay is whole
        // seconds from a truncated now); three tries make a miss vanishingly rare.
        for attempt in 1..=3 {
            let started = Instant::now();
            match bmc.set_power_state(PowerAction::On, timeout).await {
                Err(BmcError::PowerTimeout { expected, actual, waited, .. }) => {
                    let took = started.elapsed();
                    println!(
                        "power timeout after {:.2} s (waited {waited:?}, node reports {actual})",
                        took.as_secs_f64()
                    );
                    assert_eq!(expected, PowerState::On);
                    assert_eq!(actual, "Off");
                    assert!(waited >= timeout && took < timeout + COMMAND_TIMEOUT, "{took:?}");
                    return;
                }
                Ok(()) => {
                    println!("attempt {attempt}: the emulator powered on within {timeout:?}; again");
                    act(&bmc, PowerAction::Off).await;
                }
                Err(err) => panic!("{err}"),
            }
        }
        panic!("the emulator powered on within {timeout:?} three times");
    });
}

#[test]
fn a_reset_the_bmc_rejects_is_refused_with_its_message() {
    let options = SushyOptions { disable_power_off: true, ..SushyOptions::default() };
    let emulator = start("power_refused", &[FakeSystem::new("node-0", PowerState::On)], options);
    let system_id = &emulator.system_ids()[0];
    let bmc = driver(&emulator.driver_info(system_id));
    within(Duration::from_secs(30), async {
        let err = bmc.set_power_state(PowerAction::Off, POWER_TIMEOUT).await.unwrap_err();
        let message = err.to_string();
        println!("{message}");
        assert!(matches!(err, BmcError::Refused { .. }), "{err:?}");
        assert!(message.contains(&format!("POST /redfish/v1/Systems/{system_id}/Actions/ComputerSystem.Reset")));
        assert!(message.contains("HTTP 400") && message.contains("SUSHY_EMULATOR_DISABLE_POWER_OFF"), "{message}");
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    });
}

#[test]
fn boot_devices_are_set_and_read_back() {
    let emulator = start("boot", &[FakeSystem::new("node-0", PowerState::Off)], SushyOptions::default());
    let system_id = emulator.system_ids()[0].clone();
    let bmc = driver(&emulator.driver_info(&system_id));
    let once = |device| BootDeviceSetting { device, persistent: false };
    let persistent = |device| BootDeviceSetting { device, persistent: true };
    within(Duration::from_secs(60), async {
        assert_eq!(
            bmc.supported_boot_devices(),
            [BootDevice::Pxe, BootDevice::Disk, BootDevice::Cdrom, BootDevice::Bios, BootDevice::UefiHttp]
        );
        // sushy starts at Hdd, and always reads back Continuous whatever was asked for: it ignores
        // BootSourceOverrideEnabled (the PATCH carries it; Once really is sent).
        assert_eq!(bmc.boot_device().await.unwrap(), Some(persistent(BootDevice::Disk)));
        bmc.set_boot_device(once(BootDevice::Pxe), BootMode::Uefi).await.unwrap();
        assert_eq!(bmc.boot_device().await.unwrap(), Some(persistent(BootDevice::Pxe)));
        bmc.set_boot_device(persistent(BootDevice::Disk), BootMode::Uefi).await.unwrap();
        assert_eq!(bmc.boot_device().await.unwrap(), Some(persistent(BootDevice::Disk)));
        bmc.set_boot_device(once(BootDevice::Cdrom), BootMode::Uefi).await.unwrap();
        assert_eq!(bmc.boot_device().await.unwrap(), Some(persistent(BootDevice::Cdrom)));
        assert_eq!(system_json(&emulator, &system_id).await["Boot"]["BootSourceOverrideMode"], json!("UEFI"));

        // BiosSetup is not among sushy's BootSourceOverrideTarget@Redfish.AllowableValues.
        let err = bmc.set_boot_device(once(BootDevice::Bios), BootMode::Uefi).await.unwrap_err();
        println!("{err}");
        assert!(matches!(err, BmcError::Unsupported { .. }), "{err:?}");
        assert!(err.to_string().contains("BiosSetup") && err.to_string().contains("Pxe, Cd, Hdd, UefiHttp"));
        let err = bmc.set_boot_device(once(BootDevice::Safe), BootMode::Uefi).await.unwrap_err();
        assert!(matches!(err, BmcError::Unsupported { .. }), "{err:?}");
        assert_eq!(bmc.boot_device().await.unwrap(), Some(persistent(BootDevice::Cdrom)), "refusals change nothing");

        // Legacy mode is set along with the device, and then sushy no longer offers UefiHttp.
        bmc.set_boot_device(once(BootDevice::Pxe), BootMode::Bios).await.unwrap();
        assert_eq!(system_json(&emulator, &system_id).await["Boot"]["BootSourceOverrideMode"], json!("Legacy"));
        assert_eq!(bmc.boot_device().await.unwrap(), Some(persistent(BootDevice::Pxe)));
        let err = bmc.set_boot_device(once(BootDevice::UefiHttp), BootMode::Bios).await.unwrap_err();
        assert!(matches!(err, BmcError::Unsupported { .. }), "{err:?}");
    });
}

#[test]
fn the_system_is_found_or_named() {
    let systems = [FakeSystem::new("node-0", PowerState::On), FakeSystem::new("node-1", PowerState::Off)];
    let emulator = start("systems", &systems, SushyOptions::default());
    within(Duration::from_secs(30), async {
        // By path or by bare id.
        let by_path = driver(&emulator.driver_info(&emulator.system_ids()[0]));
        assert_eq!(by_path.power_state().await.unwrap(), PowerState::On);
        let mut info = emulator.driver_info(&emulator.system_ids()[1]);
        info.insert("redfish_system_id".into(), json!(emulator.system_ids()[1]));
        assert_eq!(driver(&info).power_state().await.unwrap(), PowerState::Off);

        // Without an id and two systems: the error lists them.
        info.remove("redfish_system_id");
        let err = driver(&info).power_state().await.unwrap_err();
        println!("{err}");
        match &err {
            BmcError::InvalidDriverInfo { field, reason } => {
                assert_eq!(*field, "redfish_system_id");
                for id in emulator.system_ids() {
                    assert!(reason.contains(&SushyEmulator::system_path(id)), "{reason}");
                }
            }
            other => panic!("{other:?}"),
        }

        info.insert("redfish_system_id".into(), json!("no-such-system"));
        let err = driver(&info).power_state().await.unwrap_err();
        println!("{err}");
        assert!(matches!(err, BmcError::Refused { .. }), "{err:?}");
        assert!(err.to_string().contains("HTTP 404 Not Found: Fake system no-such-system was not found"), "{err}");
    });

    let single = start("single_system", &[FakeSystem::new("node-0", PowerState::On)], SushyOptions::default());
    let mut info = single.driver_info(&single.system_ids()[0]);
    info.remove("redfish_system_id");
    within(Duration::from_secs(30), async {
        assert_eq!(driver(&info).power_state().await.unwrap(), PowerState::On);
    });
}

#[test]
fn basic_auth_is_used_where_sessions_are_missing() {
    let emulator = start("auth", &[FakeSystem::new("node-0", PowerState::On)], with_auth());
    let info = emulator.driver_info(&emulator.system_ids()[0]);
    let with = |changes: Value| {
        let mut info = info.clone();
        for (key, value) in changes.as_object().unwrap() {
            match value {
                Value::Null => info.remove(key),
                value => info.insert(key.clone(), value.clone()),
            };
        }
        driver(&info)
    };
    within(Duration::from_secs(60), async {
        // auto (the default): sushy has no SessionService, so the session POST fails and basic works.
        assert_eq!(with(json!({})).power_state().await.unwrap(), PowerState::On);
        assert_eq!(with(json!({"redfish_auth_type": "basic"})).power_state().await.unwrap(), PowerState::On);
        with(json!({}))
            .set_boot_device(BootDeviceSetting { device: BootDevice::Pxe, persistent: true }, BootMode::Uefi)
            .await
            .unwrap();

        let err = with(json!({"redfish_auth_type": "session"})).power_state().await.unwrap_err();
        println!("session only: {err}");
        assert!(matches!(err, BmcError::Refused { .. }), "{err:?}");
        assert!(err.to_string().contains("POST /redfish/v1/SessionService/Sessions"), "{err}");

        for auth_type in ["auto", "basic"] {
            let started = Instant::now();
            let err = with(json!({"redfish_password": "wrong-pw", "redfish_auth_type": auth_type}))
                .power_state()
                .await
                .unwrap_err();
            let took = started.elapsed();
            let message = err.to_string();
            println!("wrong password ({auth_type}): {:.2} s: {message}", took.as_secs_f64());
            assert!(matches!(err, BmcError::Refused { .. }), "{err:?}");
            assert!(message.contains("HTTP 401 Unauthorized") && message.contains(emulator.base_url()), "{message}");
            assert!(!message.contains("wrong-pw") && !message.contains(PASSWORD), "{message}");
            assert!(took < Duration::from_secs(2), "{took:?}");
        }

        let err = with(json!({"redfish_username": null, "redfish_password": null})).power_state().await.unwrap_err();
        println!("no credentials: {err}");
        assert!(err.to_string().contains("HTTP 401 Unauthorized: Authorization required"), "{err}");
    });
}

#[test]
fn tls_is_verified_against_the_given_ca() {
    let options = SushyOptions { tls: true, ..with_auth() };
    let emulator = start("tls", &[FakeSystem::new("node-0", PowerState::Off)], options);
    let info = emulator.driver_info(&emulator.system_ids()[0]);
    assert!(emulator.base_url().starts_with("https://"));
    assert_eq!(info["redfish_verify_ca"], json!(emulator.ca_cert_path().unwrap()));
    within(Duration::from_secs(60), async {
        assert_eq!(driver(&info).power_state().await.unwrap(), PowerState::Off);

        for verify in [json!(true), Value::Null] {
            let mut default_roots = info.clone();
            default_roots.insert("redfish_verify_ca".into(), verify);
            let started = Instant::now();
            let err = driver(&default_roots).power_state().await.unwrap_err();
            let message = err.to_string();
            println!("default verification: {:.2} s: {message}", started.elapsed().as_secs_f64());
            match &err {
                BmcError::Unreachable { attempts, reason, .. } => {
                    assert_eq!(*attempts, 1, "a certificate failure is not retried");
                    assert!(reason.contains("certificate") && reason.contains("UnknownIssuer"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            assert!(message.contains(emulator.base_url()) && !message.contains(PASSWORD), "{message}");
        }

        let mut unverified = info.clone();
        unverified.insert("redfish_verify_ca".into(), json!("false"));
        assert_eq!(driver(&unverified).power_state().await.unwrap(), PowerState::Off);

        // Plain HTTP to the TLS port: the emulator closes the connection.
        let mut plain = info.clone();
        plain.insert("redfish_address".into(), json!(emulator.base_url().replacen("https://", "http://", 1)));
        let err = driver(&plain).power_state().await.unwrap_err();
        println!("plain HTTP to TLS: {err}");
        assert!(!err.to_string().contains(PASSWORD), "{err}");
    });
}

#[test]
fn a_bmc_that_stops_answering_is_unreachable_within_the_command_timeout() {
    let mut emulator = start("unreachable", &[FakeSystem::new("node-0", PowerState::Off)], with_auth());
    let bmc = driver(&emulator.driver_info(&emulator.system_ids()[0]));
    let base_url = emulator.base_url().to_owned();
    let check = |err: &BmcError, took: Duration| {
        let message = err.to_string();
        println!("{:.2} s: {message}", took.as_secs_f64());
        assert!(matches!(err, BmcError::Unreachable { .. }), "{err:?}");
        assert!(message.contains(&base_url) && message.contains("GET /redfish/v1/Systems/"), "{message}");
        assert!(!message.contains(PASSWORD), "{message}");
        assert!(took < COMMAND_TIMEOUT + Duration::from_secs(1), "{took:?}");
    };
    within(Duration::from_secs(60), async {
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);

        // Frozen: the kernel accepts the connection, nobody answers.
        emulator.freeze().unwrap();
        let started = Instant::now();
        let err = bmc.power_state().await.unwrap_err();
        check(&err, started.elapsed());
        assert!(err.to_string().contains("no answer within"), "{err}");
        let started = Instant::now();
        let err = bmc.set_power_state(PowerAction::On, POWER_TIMEOUT).await.unwrap_err();
        check(&err, started.elapsed());
        emulator.thaw().unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off, "answers again once thawed");

        // Gone: connections are refused, and retried a few times within the command timeout.
        emulator.kill().unwrap();
        let started = Instant::now();
        let err = bmc.power_state().await.unwrap_err();
        check(&err, started.elapsed());
        assert!(matches!(err, BmcError::Unreachable { attempts: 3, .. }), "{err:?}");
        assert!(err.to_string().contains("Connection refused"), "{err}");
    });
}
