//! No Secret data ever reaches a log, an Event or a metric: kubeconfig and CA Secrets
//! carry a unique marker in every value, some of them unusable, and the controller binary
//! (at debug level, the most it says) is searched for it.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::binary::Binary;
use common::{env, eventually, unique};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use metal3_fakenode::resources::CLUSTER_NAME_LABEL;
use metal3_fakenode_testkit::simulate::world::{self, MachineSpec};

const LIMIT: Duration = Duration::from_secs(60);

/// Kubeconfigs that all fail, each with the marker `m` in every value it has.
fn kubeconfigs(m: &str, server: &str, ca_pem: &str) -> Vec<(&'static str, String)> {
    let real_ca = BASE64.encode(ca_pem);
    let fake_ca = BASE64.encode(m);
    let named = |user: &str, ca: &str, server: &str| {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: {m}-ctx\n\
             clusters:\n- name: {m}-cluster\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             contexts:\n- name: {m}-ctx\n  context: {{cluster: {m}-cluster, user: {m}-user, namespace: {m}}}\n\
             users:\n- name: {m}-user\n  user:\n{user}"
        )
    };
    vec![
        (
            "exec",
            named(
                &format!(
                    "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/{m}\n      args: [{m}]\n      env: [{{name: {m}, value: {m}}}]\n"
                ),
                &fake_ca,
                &format!("https://127.0.0.1:1/{m}"),
            ),
        ),
        (
            "yaml",
            format!(
                "apiVersion: v1\nclusters: [{{name: {m}, cluster: {{server: \"{m}\"\n  - {m}: {m}\n"
            ),
        ),
        (
            "token",
            named(&format!("    token: {m}\n"), &real_ca, server),
        ),
        ("ca", named(&format!("    token: {m}\n"), &fake_ca, server)),
        (
            "header",
            named(&format!("    token: \"{m}\\n{m}\"\n"), &real_ca, server),
        ),
    ]
}

#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn secret_data_never_reaches_a_log_an_event_or_a_metric() {
    let env = env().await;
    let admin = env.management.client().await.unwrap();
    let ns = unique("canary");
    world::namespace(&admin, &ns).await.unwrap();
    let marker = format!(
        "canary{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let server = &env.workloads[0];
    let mut machines = Vec::new();
    for (what, kubeconfig) in kubeconfigs(&marker, server.url(), &server.ca_pem()) {
        let cluster = format!("{ns}-{what}");
        common::cluster_with_kubeconfig(&admin, &ns, &cluster, &kubeconfig).await;
        // CAPI's CA Secret carries the cluster label too: it is watched, never read.
        let ca = Secret {
            metadata: ObjectMeta {
                name: Some(format!("{cluster}-ca")),
                labels: Some([(CLUSTER_NAME_LABEL.to_string(), cluster.clone())].into()),
                ..Default::default()
            },
            data: Some(
                [("tls.crt", &marker), ("tls.key", &marker)]
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .into(),
            ),
            ..Default::default()
        };
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &ca)
            .await
            .unwrap();
        let spec = MachineSpec::new(&cluster, &format!("{cluster}-cp-0"), true);
        machines.push((what, world::machine(&admin, &ns, &spec).await.unwrap()));
    }
    let kubeconfig = common::admin_yaml(&env.management);
    let args = ["--namespace", &ns, "--max-retry-delay", "2s"];
    let mut ctl = Binary::spawn(&kubeconfig, &args, "debug");
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    for (what, m) in &machines {
        eventually(
            &format!("a Warning Event for the {what} kubeconfig"),
            LIMIT,
            || async {
                let all = events.list(&ListParams::default()).await.ok()?.items;
                all.into_iter().find(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some(&m.spec.name)
                })
            },
        )
        .await;
    }
    // A few retries of each.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let metrics = ctl.metrics().await;
    ctl.signal(libc::SIGTERM);
    ctl.exit_within(LIMIT).await.expect("it stops");
    let log = ctl.lines().join("\n");
    let events =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap()).unwrap();
    let reasons: Vec<&str> = [
        "KubeconfigUnusable",
        "KubeconfigInvalid",
        "WorkloadForbidden",
    ]
    .into_iter()
    .filter(|r| events.contains(r))
    .collect();
    assert_eq!(reasons.len(), 3, "the failures were seen: {reasons:?}");
    assert!(
        log.len() > 10_000,
        "the debug log says much: {} bytes",
        log.len()
    );
    for (place, text) in [
        ("the log", &log),
        ("an Event", &events),
        ("the metrics", &metrics),
    ] {
        for needle in [marker.clone(), BASE64.encode(&marker)] {
            if let Some(at) = text.find(&needle) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(200)
                    .map_or(0, |(i, _)| i);
                panic!(
                    "Secret data in {place}: ...{}",
                    &text[from..at + needle.len()]
                );
            }
        }
    }
}
