//! The deployment files beside the systemd unit: the Kubernetes DaemonSet
//! (`deploy/kubernetes/agent.yaml`) and the Dockerfile's least-privilege
//! `docker run`. Without a cluster, the manifest is decoded as the API
//! server decodes it (the `k8smanifest` fixture: strict decoding into
//! k8s.io/api types, metadata and label validation), and what it grants is
//! held to the unit's capability set, which `host_service` proves is enough
//! and minimal.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use support::{agent::command, fixture};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

/// The unit's capabilities without `CAP_`, as Kubernetes and Docker name
/// them (`SYS_ADMIN`).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(repo().join("scripts/systemd/agent.service")).expect("unit");
    unit.lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit")
        .split_whitespace()
        .map(|cap| cap.strip_prefix("CAP_").expect("CAP_ name").to_owned())
        .collect()
}

/// The `k8smanifest` checker's report on `manifest`, or its error line.
fn check(manifest: &Path) -> Result<serde_json::Value, String> {
    let checker = fixture::build_module("k8smanifest", &[]);
    let out = Command::new(checker)
        .arg(manifest)
        .output()
        .expect("run k8smanifest");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("JSON report"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("string").to_owned())
        .collect()
}

/// The one workload of `report`, of `kind`, with its agent container
/// granted exactly the unit's capabilities and nothing more.
fn least_privilege_workload<'a>(
    report: &'a serde_json::Value,
    kind: &str,
) -> &'a serde_json::Value {
    let workloads = report["workloads"].as_array().expect("workloads");
    let [workload] = workloads.as_slice() else {
        panic!("one workload: {report}");
    };
    assert_eq!(workload["kind"], kind);
    assert_eq!(workload["privileged"], false);
    assert_eq!(strings(&workload["capabilities_drop"]), ["ALL"]);
    assert_eq!(
        strings(&workload["capabilities_add"]),
        unit_capabilities(),
        "the {kind} grants the unit's set"
    );
    workload
}

#[test]
fn the_daemonset_decodes_strictly_and_grants_exactly_the_units_capabilities() {
    let manifest = repo().join("deploy/kubernetes/agent.yaml");
    let report = check(&manifest).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        strings(&report["kinds"]),
        ["Namespace", "ConfigMap", "DaemonSet"]
    );
    let report = least_privilege_workload(&report, "DaemonSet");
    assert_eq!(report["host_pid"], true, "the node's processes");
    assert_eq!(report["env"]["K8S_NODE_NAME"], "fieldRef:spec.nodeName");
    assert_eq!(
        report["env"]["OTEL_RESOURCE_ATTRIBUTES"],
        "k8s.node.name=$(K8S_NODE_NAME)"
    );

    // The configuration file the container is started with is in the
    // ConfigMap it mounts, and the agent accepts it (a key it does not know
    // would be an error naming the file and line).
    let args = strings(&report["args"]);
    let [flag, path] = args.as_slice() else {
        panic!("args {args:?}");
    };
    assert_eq!(flag, "--config");
    let config = report["config_files"][path.as_str()]
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not in a mounted ConfigMap: {report}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, config).expect("write config");
    let out = command()
        .arg("--config")
        .arg(&file)
        .arg("--version")
        .output()
        .expect("run agent");
    assert!(
        out.status.success(),
        "the agent refuses the ConfigMap's file: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The checker is strict as the API server is: a field name in the
    // wrong case, or a name that is not a DNS subdomain, is refused.
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    for (from, to, refusal) in [
        ("hostPID: true", "hostPid: true", "unknown field"),
        ("name: agent-config", "name: Agent_Config", "metadata.name"),
    ] {
        assert!(text.contains(from), "{from}");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, text.replacen(from, to, 1)).expect("write");
        let err = check(&bad).expect_err(to);
        assert!(err.contains(refusal), "{to}: {err}");
    }

    // And a configuration key the agent does not know is refused.
    std::fs::write(&file, format!("{config}\nno-such-setting = 1\n")).expect("write");
    let out = command()
        .arg("--config")
        .arg(&file)
        .arg("--version")
        .output()
        .expect("run agent");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-setting"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_sidecar_shares_its_pods_pid_namespace_and_names_the_pod_from_the_downward_api() {
    let report =
        check(&repo().join("deploy/kubernetes/sidecar.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let workload = least_privilege_workload(&report, "Deployment");
    assert_eq!(workload["share_process_namespace"], true);
    assert_eq!(workload["host_pid"], false, "the pod's processes only");
    assert_eq!(strings(&workload["containers"]), ["app", "agent"]);
    let env = &workload["env"];
    let mut attributes = env["OTEL_RESOURCE_ATTRIBUTES"]
        .as_str()
        .expect("OTEL_RESOURCE_ATTRIBUTES")
        .to_owned();
    // The kubelet expands $(NAME) from the variables before it.
    for (name, field) in [
        ("K8S_POD_NAME", "metadata.name"),
        ("K8S_NAMESPACE", "metadata.namespace"),
        ("K8S_POD_UID", "metadata.uid"),
        ("K8S_NODE_NAME", "spec.nodeName"),
    ] {
        assert_eq!(env[name], format!("fieldRef:{field}"), "{name}");
        attributes = attributes.replace(&format!("$({name})"), &format!("<{field}>"));
    }
    assert_eq!(
        attributes,
        "k8s.pod.name=<metadata.name>,k8s.namespace.name=<metadata.namespace>,k8s.pod.uid=<metadata.uid>,k8s.node.name=<spec.nodeName>"
    );
}

#[test]
fn the_dockerfiles_least_privilege_run_adds_the_units_capabilities() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let added: Vec<String> = dockerfile
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("--cap-add="))
        .map(str::to_owned)
        .collect();
    assert_eq!(added, unit_capabilities());
    assert!(dockerfile.contains("--cap-drop=ALL"));
    assert!(
        dockerfile.lines().any(|l| l.trim() == "FROM scratch"),
        "a static binary on an empty image"
    );
}
