//! iPXE scripts against golden files. Set `UPDATE_GOLDEN=1` to rewrite them after a deliberate change.

mod common;

use std::path::PathBuf;

use common::{Server, MAC, NODE_UUID, PUBLIC_URL};
use ferric_controller::ipxe::{BootMode, BootScript};
use ferric_controller::DEFAULT_KERNEL_ARGS;
use reqwest::StatusCode;
use serde_json::json;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// Compares `actual` with the golden file `name`, without ever writing it.
fn assert_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

/// Like [`assert_golden`], but first rewrites the file under `UPDATE_GOLDEN`. Only the
/// rendering test owns the files, so the tests never race to write one.
fn check_owned_golden(name: &str, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden_path(name), actual).unwrap();
    }
    assert_golden(name, actual);
}

fn ramdisk(boot_mode: BootMode) -> BootScript {
    BootScript::Ramdisk {
        public_url: PUBLIC_URL.into(),
        node_uuid: NODE_UUID.into(),
        state: "wait call-back".into(),
        mac: MAC.into(),
        boot_mode,
        kernel_args: DEFAULT_KERNEL_ARGS.into(),
    }
}

#[test]
fn scripts_match_their_golden_files() {
    check_owned_golden("boot.ipxe", &BootScript::Chain { public_url: PUBLIC_URL.into() }.render());
    check_owned_golden("ramdisk-uefi.ipxe", &ramdisk(BootMode::Uefi).render());
    check_owned_golden("ramdisk-bios.ipxe", &ramdisk(BootMode::Bios).render());
    let local = |state: &str, boot_mode| {
        BootScript::LocalBoot { node_uuid: NODE_UUID.into(), state: state.into(), boot_mode }.render()
    };
    check_owned_golden("local-boot-uefi.ipxe", &local("active", BootMode::Uefi));
    check_owned_golden("local-boot-bios.ipxe", &local("active", BootMode::Bios));
    check_owned_golden("nothing-to-do.ipxe", &local("manageable", BootMode::Uefi));
    check_owned_golden("unknown-mac.ipxe", &BootScript::UnknownMac { mac: MAC.into() }.render());
}

async fn fetch(server: &Server, path: &str) -> String {
    let response = server.http.get(format!("{}{path}", server.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn the_server_picks_the_script_for_the_nodes_state() {
    let server = common::start().await;
    assert_golden("boot.ipxe", &fetch(&server, "/boot.ipxe").await);
    assert_golden("unknown-mac.ipxe", &fetch(&server, "/ipxe/52-54-00-12-34-56").await);
    server.enroll(json!({})).await;
    server.provision("manage").await;
    assert_golden("nothing-to-do.ipxe", &fetch(&server, "/ipxe/52-54-00-12-34-56").await);
    server.provision("provide").await;
    server.deploying_node_after_provide().await;
    // Hyphens (iPXE's ${mac:hexhyp}) and colons both name the NIC.
    assert_golden("ramdisk-uefi.ipxe", &fetch(&server, "/ipxe/52-54-00-12-34-56").await);
    assert_golden("ramdisk-uefi.ipxe", &fetch(&server, "/ipxe/52:54:00:12:34:56").await);
    let bios = json!([{"op": "add", "path": "/properties/capabilities", "value": "boot_mode:bios"}]);
    // Patching is refused mid-deploy, so abort first, set the capability, and deploy again.
    server.provision("abort").await;
    assert_eq!(server.patch(bios).await.status(), StatusCode::OK);
    server.provision("active").await;
    assert_golden("ramdisk-bios.ipxe", &fetch(&server, "/ipxe/52-54-00-12-34-56").await);
    let invalid = server.http.get(format!("{}/ipxe/not-a-mac", server.base)).send().await.unwrap();
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_ramdisk_files_are_served_with_ranges() {
    let server = common::start().await;
    assert_eq!(fetch(&server, "/ramdisk/vmlinuz").await, "kernel bytes");
    assert_eq!(fetch(&server, "/ramdisk/initramfs").await, "initramfs bytes");
    let partial = server
        .http
        .get(format!("{}/ramdisk/initramfs", server.base))
        .header("Range", "bytes=0-8")
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(partial.text().await.unwrap(), "initramfs");
}
