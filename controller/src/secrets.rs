//! Masking of secrets in node dictionaries, like oslo's `mask_dict_password` used by Ironic.

use serde_json::Value;

use crate::model::JsonObject;

/// What a secret reads as through the API.
pub const MASK: &str = "******";

/// A key containing any of these (case-insensitively) holds a secret (oslo's `_SANITIZE_KEYS`).
const SECRET_KEY_PARTS: &[&str] = &[
    "adminpass",
    "admin_pass",
    "password",
    "auth_token",
    "new_pass",
    "secret",
    "sys_pswd",
    "token",
    "configdrive",
    "chappassword",
    "encrypted_key",
    "private_key",
    "fernetkey",
    "sslkey",
    "passphrase",
    "cephkey",
    "keystoneclient",
    "encryption_key",
];

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// A copy of `object` with secret values replaced by [`MASK`], nested objects included.
/// A secret key is masked whatever its value: a `configdrive` may be an object.
pub fn mask_object(object: &JsonObject) -> JsonObject {
    object
        .iter()
        .map(|(key, value)| {
            let masked = match value {
                _ if is_secret_key(key) => Value::String(MASK.to_owned()),
                Value::Object(nested) => Value::Object(mask_object(nested)),
                other => other.clone(),
            };
            (key.clone(), masked)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_masked_at_any_depth() {
        let Value::Object(info) = json!({
            "ipmi_username": "admin",
            "ipmi_password": "hunter2",
            "redfish": {"Password": "x", "address": "https://bmc"},
            "agent_secret_token": "t",
            "configdrive": {"meta_data": {"public_keys": {"0": "ssh-ed25519 AAAA"}}, "user_data": "#cloud-config"},
        }) else {
            unreachable!()
        };
        let masked = mask_object(&info);
        assert_eq!(masked["ipmi_username"], "admin");
        assert_eq!(masked["ipmi_password"], MASK);
        assert_eq!(masked["redfish"]["Password"], MASK);
        assert_eq!(masked["redfish"]["address"], "https://bmc");
        assert_eq!(masked["agent_secret_token"], MASK);
        assert_eq!(masked["configdrive"], MASK);
    }

    #[test]
    fn partition_uuids_reported_by_the_agent_stay_readable() {
        let Value::Object(info) = json!({"partition_uuids": {ferric_protocol::CONFIG_DRIVE_UUID_KEY: "0c7e1a1e"}})
        else {
            unreachable!()
        };
        assert_eq!(mask_object(&info)["partition_uuids"][ferric_protocol::CONFIG_DRIVE_UUID_KEY], "0c7e1a1e");
    }
}
