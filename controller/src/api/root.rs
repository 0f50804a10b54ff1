//! Version discovery: `GET /` and `GET /v1`.

use axum::Json;
use serde_json::{json, Value};

use super::microversion::{self, ApiVersion};
use super::BaseUrl;

fn version_object(base: &str) -> Value {
    json!({
        "id": "v1",
        "links": [{"href": format!("{base}/v1/"), "rel": "self"}],
        "status": "CURRENT",
        "min_version": ApiVersion::MIN.header_value(),
        "version": ApiVersion::MAX.header_value(),
    })
}

fn resource_links(base: &str, resource: &str) -> Value {
    json!([
        {"href": format!("{base}/v1/{resource}/"), "rel": "self"},
        {"href": format!("{base}/{resource}/"), "rel": "bookmark"},
    ])
}

pub async fn root(BaseUrl(base): BaseUrl) -> Json<Value> {
    Json(json!({
        "name": "OpenStack Ironic API",
        "description": "Ironic is an OpenStack project which enables the provision and management of baremetal machines.",
        "default_version": version_object(&base),
        "versions": [version_object(&base)],
    }))
}

/// Lists the resources this controller serves; the agent endpoints appear from 1.22.
pub async fn v1(BaseUrl(base): BaseUrl, version: ApiVersion) -> Json<Value> {
    let mut document = json!({
        "id": "v1",
        "links": [
            {"href": format!("{base}/v1/"), "rel": "self"},
            {"href": "https://docs.openstack.org/ironic/latest/contributor/webapi.html", "rel": "describedby", "type": "text/html"},
        ],
        "media_types": {"base": "application/json", "type": "application/vnd.openstack.ironic.v1+json"},
        "nodes": resource_links(&base, "nodes"),
        "ports": resource_links(&base, "ports"),
        "version": version_object(&base),
    });
    if version.at_least(microversion::LOOKUP_HEARTBEAT) {
        document["lookup"] = resource_links(&base, "lookup");
        document["heartbeat"] = resource_links(&base, "heartbeat");
    }
    Json(document)
}
