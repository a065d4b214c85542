//! Why a Metal3Machine cannot get its Node (yet). Each variant has a bounded `reason()`
//! used alike as the metric label, the Kubernetes Event reason and the log field.

use crate::resources::{BMH_ANNOTATION, CLUSTER_NAME_LABEL, UUID_LABEL};
use crate::tolerant::Problem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Metal3Machine has no {BMH_ANNOTATION} annotation (CAPM3 has not chosen a host)")]
    MissingAnnotation,
    #[error("annotation {BMH_ANNOTATION}={value:?} is not of the form <namespace>/<name>")]
    MalformedAnnotation { value: String },
    #[error(
        "annotation {BMH_ANNOTATION} names namespace {found:?}, but a host must be in the \
         Metal3Machine's own namespace {expected:?}"
    )]
    AnnotationNamespaceMismatch { found: String, expected: String },
    #[error("BareMetalHost {host} not found")]
    HostNotFound { host: String },
    #[error("BareMetalHost {host} is consumed by {consumer}, not by this Metal3Machine")]
    HostConsumedByOther { host: String, consumer: String },
    #[error("the Metal3Machine has no owning CAPI Machine")]
    NoOwnerMachine,
    #[error("owning Machine {machine} not found")]
    MachineNotFound { machine: String },
    #[error("Machine {machine} has no {CLUSTER_NAME_LABEL} label")]
    NoClusterLabel { machine: String },
    #[error("Cluster {cluster} not found (needed for the control plane's kubeadm-config)")]
    ClusterNotFound { cluster: String },
    #[error("kubeconfig Secret {secret} not found")]
    KubeconfigSecretMissing { secret: String },
    #[error("kubeconfig Secret {secret} has no `value` key")]
    KubeconfigSecretNoValue { secret: String },
    #[error("kubeconfig Secret {secret}: `value` is not a kubeconfig: {message}")]
    KubeconfigInvalid { secret: String, message: String },
    #[error("kubeconfig Secret {secret}: no usable context, cluster or user: {message}")]
    KubeconfigUnusable { secret: String, message: String },
    #[error("workload cluster {cluster}: API server unreachable: {message}")]
    WorkloadUnreachable { cluster: String, message: String },
    #[error("workload cluster {cluster}: TLS failure (CA mismatch?): {message}")]
    WorkloadTls { cluster: String, message: String },
    #[error("workload cluster {cluster}: {message}")]
    WorkloadForbidden { cluster: String, message: String },
    #[error("workload cluster {cluster}: throttled (429): {message}")]
    WorkloadThrottled { cluster: String, message: String },
    #[error("workload cluster {cluster}: server error: {message}")]
    WorkloadServerError { cluster: String, message: String },
    #[error("workload cluster {cluster}: request failed: {message}")]
    WorkloadRequest { cluster: String, message: String },
    #[error(
        "Node {node} already exists in workload cluster {cluster} with {UUID_LABEL}={found:?}, \
         not {wanted:?}; it is left untouched"
    )]
    NodeConflict {
        cluster: String,
        node: String,
        found: Option<String>,
        wanted: String,
    },
    #[error(
        "cannot annotate the KubeadmConfig of Machine {machine} with its certificates' \
         expiry (RBAC: deploy/components/certificate-expiry): {message}"
    )]
    CertificateExpiryAnnotation { machine: String, message: String },
    #[error("this Metal3Machine cannot be read ({problem}); fix or replace it")]
    Metal3MachineUnreadable { problem: Problem },
    #[error("BareMetalHost {host} cannot be read ({problem})")]
    HostUnreadable { host: String, problem: Problem },
    #[error("owning Machine {machine} cannot be read ({problem})")]
    MachineUnreadable { machine: String, problem: Problem },
    #[error("Cluster {cluster} cannot be read ({problem})")]
    ClusterUnreadable { cluster: String, problem: Problem },
    #[error("kubeconfig Secret {secret} cannot be read ({problem})")]
    KubeconfigSecretUnreadable { secret: String, problem: Problem },
    #[error(
        "Machine {machine} cannot be a Node: {message}; a real kubelet would fail to \
         register it too (retried when the Machine changes)"
    )]
    NodeNameInvalid { machine: String, message: String },
    #[error("workload cluster {cluster}: rejected as invalid (retried slowly): {message}")]
    WorkloadInvalid { cluster: String, message: String },
}

impl Error {
    /// Every value `reason()` can return, so metrics can start each at zero.
    pub const REASONS: &'static [&'static str] = &[
        "missing_annotation",
        "malformed_annotation",
        "annotation_namespace_mismatch",
        "host_not_found",
        "host_consumed_by_other",
        "no_owner_machine",
        "machine_not_found",
        "no_cluster_label",
        "cluster_not_found",
        "kubeconfig_secret_missing",
        "kubeconfig_secret_no_value",
        "kubeconfig_invalid",
        "kubeconfig_unusable",
        "workload_unreachable",
        "workload_tls",
        "workload_forbidden",
        "workload_throttled",
        "workload_server_error",
        "workload_request_failed",
        "node_conflict",
        "certificate_expiry_annotation_failed",
        "metal3machine_unreadable",
        "host_unreadable",
        "machine_unreadable",
        "cluster_unreadable",
        "kubeconfig_secret_unreadable",
        "node_name_invalid",
        "workload_invalid",
    ];

    /// A bounded, snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::MissingAnnotation => "missing_annotation",
            Error::MalformedAnnotation { .. } => "malformed_annotation",
            Error::AnnotationNamespaceMismatch { .. } => "annotation_namespace_mismatch",
            Error::HostNotFound { .. } => "host_not_found",
            Error::HostConsumedByOther { .. } => "host_consumed_by_other",
            Error::NoOwnerMachine => "no_owner_machine",
            Error::MachineNotFound { .. } => "machine_not_found",
            Error::NoClusterLabel { .. } => "no_cluster_label",
            Error::ClusterNotFound { .. } => "cluster_not_found",
            Error::KubeconfigSecretMissing { .. } => "kubeconfig_secret_missing",
            Error::KubeconfigSecretNoValue { .. } => "kubeconfig_secret_no_value",
            Error::KubeconfigInvalid { .. } => "kubeconfig_invalid",
            Error::KubeconfigUnusable { .. } => "kubeconfig_unusable",
            Error::WorkloadUnreachable { .. } => "workload_unreachable",
            Error::WorkloadTls { .. } => "workload_tls",
            Error::WorkloadForbidden { .. } => "workload_forbidden",
            Error::WorkloadThrottled { .. } => "workload_throttled",
            Error::WorkloadServerError { .. } => "workload_server_error",
            Error::WorkloadRequest { .. } => "workload_request_failed",
            Error::NodeConflict { .. } => "node_conflict",
            Error::CertificateExpiryAnnotation { .. } => "certificate_expiry_annotation_failed",
            Error::Metal3MachineUnreadable { .. } => "metal3machine_unreadable",
            Error::HostUnreadable { .. } => "host_unreadable",
            Error::MachineUnreadable { .. } => "machine_unreadable",
            Error::ClusterUnreadable { .. } => "cluster_unreadable",
            Error::KubeconfigSecretUnreadable { .. } => "kubeconfig_secret_unreadable",
            Error::NodeNameInvalid { .. } => "node_name_invalid",
            Error::WorkloadInvalid { .. } => "workload_invalid",
        }
    }

    /// Whether retrying the same inputs cannot help: the error names an object of the
    /// management cluster that must change first (and whose change wakes the Metal3Machine
    /// through the watches), so it is not retried on a timer. No hot loop against an
    /// unreadable object or a name no kubelet could register.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Metal3MachineUnreadable { .. }
                | Error::HostUnreadable { .. }
                | Error::MachineUnreadable { .. }
                | Error::ClusterUnreadable { .. }
                | Error::KubeconfigSecretUnreadable { .. }
                | Error::NodeNameInvalid { .. }
        )
    }

    /// The same reason in the UpperCamelCase that Kubernetes Events use.
    pub fn event_reason(&self) -> String {
        self.reason()
            .split('_')
            .map(|word| {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_reasons_are_camel_case_of_the_metric_reason() {
        let e = Error::KubeconfigSecretMissing {
            secret: "ns/c-kubeconfig".into(),
        };
        assert_eq!(e.reason(), "kubeconfig_secret_missing");
        assert_eq!(e.event_reason(), "KubeconfigSecretMissing");
        assert_eq!(Error::NoOwnerMachine.event_reason(), "NoOwnerMachine");
    }

    #[test]
    fn reasons_lists_every_variant_once() {
        let s = String::new;
        let p = || Problem {
            path: s(),
            message: s(),
        };
        let all = [
            Error::MissingAnnotation,
            Error::MalformedAnnotation { value: s() },
            Error::AnnotationNamespaceMismatch {
                found: s(),
                expected: s(),
            },
            Error::HostNotFound { host: s() },
            Error::HostConsumedByOther {
                host: s(),
                consumer: s(),
            },
            Error::NoOwnerMachine,
            Error::MachineNotFound { machine: s() },
            Error::NoClusterLabel { machine: s() },
            Error::ClusterNotFound { cluster: s() },
            Error::KubeconfigSecretMissing { secret: s() },
            Error::KubeconfigSecretNoValue { secret: s() },
            Error::KubeconfigInvalid {
                secret: s(),
                message: s(),
            },
            Error::KubeconfigUnusable {
                secret: s(),
                message: s(),
            },
            Error::WorkloadUnreachable {
                cluster: s(),
                message: s(),
            },
            Error::WorkloadTls {
                cluster: s(),
                message: s(),
            },
            Error::WorkloadForbidden {
                cluster: s(),
                message: s(),
            },
            Error::WorkloadThrottled {
                cluster: s(),
                message: s(),
            },
            Error::WorkloadServerError {
                cluster: s(),
                message: s(),
            },
            Error::WorkloadRequest {
                cluster: s(),
                message: s(),
            },
            Error::NodeConflict {
                cluster: s(),
                node: s(),
                found: None,
                wanted: s(),
            },
            Error::CertificateExpiryAnnotation {
                machine: s(),
                message: s(),
            },
            Error::Metal3MachineUnreadable { problem: p() },
            Error::HostUnreadable {
                host: s(),
                problem: p(),
            },
            Error::MachineUnreadable {
                machine: s(),
                problem: p(),
            },
            Error::ClusterUnreadable {
                cluster: s(),
                problem: p(),
            },
            Error::KubeconfigSecretUnreadable {
                secret: s(),
                problem: p(),
            },
            Error::NodeNameInvalid {
                machine: s(),
                message: s(),
            },
            Error::WorkloadInvalid {
                cluster: s(),
                message: s(),
            },
        ];
        let reasons: Vec<_> = all.iter().map(Error::reason).collect();
        assert_eq!(reasons, Error::REASONS);
    }
}
