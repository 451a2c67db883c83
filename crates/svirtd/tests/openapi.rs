//! docs/openapi.json is generated from the code: this test rewrites it and fails when the
//! committed file was stale, so a change to the API cannot land without its description.

use std::path::PathBuf;

#[test]
fn committed_openapi_json_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = svirtd::api::openapi_json();
    let doc: serde_json::Value =
        serde_json::from_str(&generated).expect("generated OpenAPI is JSON");
    // The description must cover every operation the CLI uses.
    for (path, method) in [
        ("/v1/domains", "get"),
        ("/v1/domains", "post"),
        ("/v1/domains/{name}", "get"),
        ("/v1/domains/{name}/xml", "get"),
        ("/v1/domains/{name}/shutdown", "post"),
        ("/v1/domains/{name}/destroy", "post"),
        ("/v1/domains/{name}/progress", "get"),
        ("/v1/domains/{name}/qemu-monitor-command", "post"),
        ("/v1/host", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "OpenAPI lacks {method} {path}"
        );
    }
    for schema in [
        "Info",
        "Summary",
        "Exit",
        "ApiError",
        "CreateRequest",
        "Host",
        "TreeProgress",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "OpenAPI lacks schema {schema}"
        );
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        panic!(
            "docs/openapi.json was stale and has been regenerated: review and commit it ({})",
            path.display()
        );
    }
}
