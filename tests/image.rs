//! The image built here (hack/image.py, imported into the node) and the
//! Dockerfile (for builders with a registry) describe the same image: user,
//! entrypoint and ports; and the image holds the static binary and what
//! distroless's static image gives it (user database, CA bundle), nothing
//! else.
mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::node::{node_var, root};
use common::run_ok;

/// The last value of each Dockerfile instruction in the final stage.
fn dockerfile(instruction: &str) -> String {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let final_stage = text.rsplit("\nFROM ").next().unwrap();
    final_stage
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("the Dockerfile's final stage has no {instruction}"))
        .trim()
        .to_string()
}

#[test]
fn the_image_built_here_is_the_dockerfile_s() {
    common::node::node();
    let archive = format!("{}/insights-remote.tar", node_var("INSIGHTS_NODE_IMAGES"));
    let out = run_ok(
        "hack/image.py inspect",
        Command::new("python3")
            .arg(root().join("hack/image.py"))
            .args(["inspect", &archive]),
    );
    let image: serde_json::Value = serde_json::from_str(&out).unwrap();
    let config = &image["config"];

    assert_eq!(config["User"], dockerfile("USER"), "same user");
    let entrypoint: serde_json::Value = serde_json::from_str(&dockerfile("ENTRYPOINT")).unwrap();
    assert_eq!(config["Entrypoint"], entrypoint, "same entrypoint");
    let exposed: BTreeSet<String> = dockerfile("EXPOSE")
        .split_whitespace()
        .map(|p| format!("{p}/tcp"))
        .collect();
    let ports: BTreeSet<String> = config["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(ports, exposed, "same ports");
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let base = text
        .rsplit("\nFROM ")
        .next()
        .unwrap()
        .lines()
        .next()
        .unwrap();
    assert!(
        base.starts_with("gcr.io/distroless/static"),
        "the Dockerfile's base is distroless static (user database and CA bundle, no libc)"
    );

    let files: Vec<&str> = image["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "etc/group",
            "etc/passwd",
            "etc/ssl/certs/ca-certificates.crt",
            "insights-remote"
        ],
        "the binary and distroless's user database and CA bundle, nothing else"
    );
    // Static: no program interpreter, so no libc is needed in the image.
    let binary = root().join("target/x86_64-unknown-linux-musl/release/insights-remote");
    let check = run_ok(
        "hack/image.py static_elf",
        Command::new("python3")
            .current_dir(root().join("hack"))
            .args([
                "-c",
                "import image, sys; print(image.static_elf(sys.argv[1]))",
            ])
            .arg(&binary),
    );
    assert_eq!(check.trim(), "True", "{} is static", binary.display());
}
