//! The OpenTelemetry resource describing the traced process.
//!
//! Precedence for `service.name`: `--service-name`, then `OTEL_SERVICE_NAME`,
//! then `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, then the executable's
//! file name. Other attributes in `OTEL_RESOURCE_ATTRIBUTES` override the
//! detected ones.

use std::path::Path;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

/// What the agent knows about the traced process.
#[derive(Clone, Debug, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The executable's path as the target sees it (`readlink /proc/N/exe`).
    pub executable_path: String,
    /// Go version from the binary's build info, e.g. `go1.26.8`.
    pub runtime_version: Option<String>,
    /// Its PID in its own PID namespace (a container's), when that is not
    /// the agent's (`process.vpid`).
    pub namespaced_pid: Option<u32>,
    /// `container.id`, from its cgroup path, when it runs in a container.
    pub container_id: Option<String>,
    /// Its Kubernetes pod, when its cgroup path names one.
    pub kubernetes: Option<KubernetesPod>,
}

/// A process's Kubernetes pod as the node sees it, without asking the API
/// server: `k8s.pod.uid` from the cgroup path (the kubelet names every
/// pod's cgroup after its UID), `k8s.namespace.name` from the service
/// account namespace file the kubelet mounts into the pod's containers
/// (absent when the pod opts out of its token). The pod's name is not on
/// the node in a form that is always right (the hostname is the pod's
/// `spec.hostname` when set): a collector's `k8sattributes` processor finds
/// it, and the rest of the pod's metadata, by `k8s.pod.uid`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubernetesPod {
    pub uid: String,
    pub namespace: Option<String>,
}

/// Where the kubelet mounts the pod's namespace name inside a container,
/// and the same place where `/var/run` is a symbolic link to `/run` (an
/// absolute link, which `/proc/N/root` would resolve in the agent's root).
const SERVICE_ACCOUNT_NAMESPACE: [&str; 2] = [
    "var/run/secrets/kubernetes.io/serviceaccount/namespace",
    "run/secrets/kubernetes.io/serviceaccount/namespace",
];

/// Process `pid`'s Kubernetes pod ([`KubernetesPod`]), when it has one.
pub fn kubernetes_pod(pid: u32) -> Option<KubernetesPod> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let uid = pod_uid(&cgroup)?;
    let root = format!("/proc/{pid}/root");
    // A link would be resolved in the agent's root, not the target's.
    let var_run_is_link = std::fs::symlink_metadata(format!("{root}/var/run"))
        .is_ok_and(|m| m.file_type().is_symlink());
    let namespace = SERVICE_ACCOUNT_NAMESPACE
        .iter()
        .filter(|path| !(var_run_is_link && path.starts_with("var/run/")))
        .find_map(|path| std::fs::read_to_string(format!("{root}/{path}")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| is_dns_label(n));
    Some(KubernetesPod { uid, namespace })
}

/// The pod UID in a `/proc/N/cgroup` under `kubepods`: the component
/// `pod<UID>` (cgroupfs driver: `/kubepods/burstable/pod<UID>/<id>`) or
/// `kubepods-<qos>-pod<UID>.slice` with the UID's dashes as underscores
/// (systemd driver).
pub fn pod_uid(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter(|line| line.contains("kubepods"))
        .flat_map(|line| line.split('/'))
        .find_map(|component| {
            let component = component.strip_suffix(".slice").unwrap_or(component);
            let (_, uid) = component.rsplit_once("pod")?;
            let uid = uid.replace('_', "-");
            is_uuid(&uid).then_some(uid)
        })
}

/// `8-4-4-4-12` hex digits, lower case (how the API server writes UIDs).
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// A Kubernetes namespace name: an RFC 1123 label.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// What `/proc/N` says of process `pid`'s container: its PID in its own
/// PID namespace ([`namespaced_pid`]) and its container id
/// ([`container_id`]).
pub fn container_details(pid: u32) -> (Option<u32>, Option<String>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    (namespaced_pid(&status, pid), container_id(&cgroup))
}

/// The last PID of `NSpid:` in `/proc/N/status` (the innermost namespace's),
/// when it is not `pid` (the PID as this agent sees it).
pub fn namespaced_pid(status: &str, pid: u32) -> Option<u32> {
    let inner: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()?;
    (inner != pid).then_some(inner)
}

/// The container id in a `/proc/N/cgroup`: 64 hex digits as the last
/// component of a cgroup path, alone (`/docker/ID`, Kubernetes'
/// `/kubepods/.../ID`) or in a runtime's scope name (`docker-ID.scope`,
/// `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope`).
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let last = line.rsplit('/').next()?;
        let last = last.strip_suffix(".scope").unwrap_or(last);
        let id = last.rsplit('-').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

/// Inputs to [`build`].
#[derive(Clone, Debug, Default)]
pub struct ResourceOptions {
    /// `--service-name`.
    pub service_name: Option<String>,
    /// `OTEL_SERVICE_NAME`.
    pub env_service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    pub env_attributes: Option<String>,
}

impl ResourceOptions {
    /// The options from the process environment and a flag.
    pub fn from_env(service_name: Option<String>) -> Self {
        Self {
            service_name,
            env_service_name: std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
            env_attributes: std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok(),
        }
    }
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES` (`key=value,key2=value2`, values
/// percent-encoded). Malformed members are skipped and returned as warnings.
pub fn parse_attributes(raw: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut attributes = Vec::new();
    let mut warnings = Vec::new();
    for member in raw.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        match member.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                attributes.push((percent_decode(key.trim()), percent_decode(value.trim())));
            }
            _ => warnings.push(format!(
                "ignoring malformed OTEL_RESOURCE_ATTRIBUTES member {member:?}"
            )),
        }
    }
    (attributes, warnings)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Builds the resource. Returns warnings for the caller to log.
pub fn build(process: Option<&ProcessInfo>, options: &ResourceOptions) -> (Resource, Vec<String>) {
    let (env_attributes, warnings) = options
        .env_attributes
        .as_deref()
        .map(parse_attributes)
        .unwrap_or_default();
    let env_service = env_attributes
        .iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v.clone());
    let default_service = process
        .and_then(|p| {
            Path::new(&p.executable_path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown_service".to_owned());
    let service_name = options
        .service_name
        .clone()
        .or_else(|| options.env_service_name.clone())
        .or(env_service)
        .unwrap_or(default_service);

    let mut attributes = vec![
        KeyValue::new("telemetry.sdk.name", "opentelemetry"),
        KeyValue::new("telemetry.sdk.language", "rust"),
        KeyValue::new("telemetry.sdk.version", SDK_VERSION),
        KeyValue::new("telemetry.distro.name", "agent"),
        KeyValue::new("telemetry.distro.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Ok(host) = nix::unistd::gethostname() {
        attributes.push(KeyValue::new(
            "host.name",
            host.to_string_lossy().into_owned(),
        ));
    }
    if let Some(p) = process {
        attributes.push(KeyValue::new("process.pid", i64::from(p.pid)));
        if let Some(vpid) = p.namespaced_pid {
            attributes.push(KeyValue::new("process.vpid", i64::from(vpid)));
        }
        if let Some(id) = &p.container_id {
            attributes.push(KeyValue::new("container.id", id.clone()));
        }
        if let Some(pod) = &p.kubernetes {
            attributes.push(KeyValue::new("k8s.pod.uid", pod.uid.clone()));
            if let Some(namespace) = &pod.namespace {
                attributes.push(KeyValue::new("k8s.namespace.name", namespace.clone()));
            }
        }
        attributes.push(KeyValue::new(
            "process.executable.path",
            p.executable_path.clone(),
        ));
        if let Some(name) = Path::new(&p.executable_path).file_name() {
            attributes.push(KeyValue::new(
                "process.executable.name",
                name.to_string_lossy().into_owned(),
            ));
        }
        // The runtime is Go only where the binary has Go build info (USDT
        // targets may be C programs).
        if let Some(version) = &p.runtime_version {
            attributes.push(KeyValue::new("process.runtime.name", "go"));
            attributes.push(KeyValue::new("process.runtime.version", version.clone()));
        }
    }
    for (key, value) in env_attributes {
        if key == "service.name" {
            continue;
        }
        attributes.retain(|kv| kv.key.as_str() != key);
        attributes.push(KeyValue::new(key, value));
    }
    attributes.push(KeyValue::new("service.name", service_name));
    let resource = Resource::builder_empty()
        .with_attributes(attributes)
        .build();
    (resource, warnings)
}

/// The opentelemetry crate version the spans are built with.
const SDK_VERSION: &str = "0.33.1";

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::Key;

    fn get(resource: &Resource, key: &'static str) -> Option<String> {
        resource
            .get(&Key::from_static_str(key))
            .map(|v| v.to_string())
    }

    #[test]
    fn service_name_precedence() {
        let process = ProcessInfo {
            pid: 42,
            executable_path: "/srv/bin/shop".into(),
            runtime_version: Some("go1.26.8".into()),
            ..Default::default()
        };
        let mut options = ResourceOptions {
            env_attributes: Some("service.name=from-attrs,deployment.environment=prod".into()),
            ..Default::default()
        };
        let (r, _) = build(Some(&process), &options);
        assert_eq!(get(&r, "service.name").as_deref(), Some("from-attrs"));
        assert_eq!(get(&r, "deployment.environment").as_deref(), Some("prod"));
        options.env_service_name = Some("from-env".into());
        let (r, _) = build(Some(&process), &options);
        assert_eq!(get(&r, "service.name").as_deref(), Some("from-env"));
        options.service_name = Some("from-flag".into());
        let (r, _) = build(Some(&process), &options);
        assert_eq!(get(&r, "service.name").as_deref(), Some("from-flag"));
        let (r, _) = build(Some(&process), &ResourceOptions::default());
        assert_eq!(get(&r, "service.name").as_deref(), Some("shop"));
        assert_eq!(get(&r, "process.pid").as_deref(), Some("42"));
        assert_eq!(
            get(&r, "process.runtime.version").as_deref(),
            Some("go1.26.8")
        );
        assert_eq!(get(&r, "process.runtime.name").as_deref(), Some("go"));
        let c_program = ProcessInfo {
            runtime_version: None,
            ..process.clone()
        };
        let (r, _) = build(Some(&c_program), &ResourceOptions::default());
        assert_eq!(get(&r, "process.runtime.name"), None, "not a Go program");
    }

    #[test]
    fn containers_pid_and_id() {
        let status = "Name:\tapi\nTgid:\t4242\nNSpid:\t4242\t1\n";
        assert_eq!(namespaced_pid(status, 4242), Some(1));
        assert_eq!(namespaced_pid("NSpid:\t4242\n", 4242), None);
        let id = "0123456789abcdef".repeat(4);
        for cgroup in [
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("12:memory:/docker/{id}\n0::/\n"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope\n"),
            format!("0::/kubepods/burstable/pod7/{id}\n"),
        ] {
            assert_eq!(
                container_id(&cgroup).as_deref(),
                Some(id.as_str()),
                "{cgroup}"
            );
        }
        assert_eq!(container_id("0::/user.slice/session-3.scope\n"), None);
        assert_eq!(
            container_id("4:memory:/process_api/ac7dcb7d78f007558ca44d56052cfd15\n"),
            None
        );
        let process = ProcessInfo {
            pid: 4242,
            namespaced_pid: Some(1),
            container_id: Some(id.clone()),
            ..Default::default()
        };
        let (r, _) = build(Some(&process), &ResourceOptions::default());
        assert_eq!(get(&r, "process.pid").as_deref(), Some("4242"));
        assert_eq!(get(&r, "process.vpid").as_deref(), Some("1"));
        assert_eq!(get(&r, "container.id"), Some(id));
    }

    #[test]
    fn kubernetes_pod_uid_from_either_cgroup_driver() {
        let uid = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
        let id = "0123456789abcdef".repeat(4);
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope\n",
            uid.replace('-', "_")
        );
        let cgroupfs = format!("12:memory:/kubepods/besteffort/pod{uid}/{id}\n0::/\n");
        let guaranteed = format!("0::/kubepods/pod{uid}/{id}\n");
        for cgroup in [systemd, cgroupfs, guaranteed] {
            assert_eq!(pod_uid(&cgroup).as_deref(), Some(uid), "{cgroup}");
        }
        // Not a pod: a Docker container, a pod-like name outside kubepods,
        // a QoS slice without a pod.
        for cgroup in [
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("0::/user.slice/pod{uid}.slice\n"),
            "0::/kubepods.slice/kubepods-besteffort.slice\n".to_owned(),
            "0::/kubepods/podNOT-A-UID/x\n".to_owned(),
        ] {
            assert_eq!(pod_uid(&cgroup), None, "{cgroup}");
        }
        assert!(is_dns_label("kube-system"));
        assert!(!is_dns_label("Bad_Name") && !is_dns_label("-x") && !is_dns_label(""));
        let process = ProcessInfo {
            pid: 7,
            kubernetes: Some(KubernetesPod {
                uid: uid.to_owned(),
                namespace: Some("shop".to_owned()),
            }),
            ..Default::default()
        };
        let (r, _) = build(Some(&process), &ResourceOptions::default());
        assert_eq!(get(&r, "k8s.pod.uid").as_deref(), Some(uid));
        assert_eq!(get(&r, "k8s.namespace.name").as_deref(), Some("shop"));
    }

    #[test]
    fn attributes_are_percent_decoded_and_malformed_members_reported() {
        let (attrs, warnings) = parse_attributes("a=b%2Cc, x = y ,broken,=v");
        assert_eq!(
            attrs,
            vec![("a".into(), "b,c".into()), ("x".into(), "y".into())]
        );
        assert_eq!(warnings.len(), 2);
    }
}
