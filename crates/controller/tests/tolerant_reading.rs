//! Nothing blinds the controller: upstream objects its typed views cannot read, values that
//! make no sense, names no kubelet could register and Secrets full of credentials, beside
//! healthy clusters, against the real API server and the real upstream CRDs, with the
//! controller binary as its own process.

mod common;

use std::time::{Duration, Instant};

use common::binary::{Binary, sample};
use common::{admin_yaml, cluster_with_kubeconfig as cluster, env, events, eventually, unique};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use metal3_fakenode::resources::UUID_LABEL;
use metal3_fakenode_testkit::envtest::ApiServer;
use metal3_fakenode_testkit::simulate::world::{self, CreatedMachine, MachineSpec};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

/// A machine whose host is still provisioning, so that the controller sees it only once
/// [`provision`] has written its whole status.
async fn machine(
    client: &kube::Client,
    ns: &str,
    cluster: &str,
    name: &str,
    cp: bool,
) -> CreatedMachine {
    let mut spec = MachineSpec::new(cluster, name, cp);
    spec.host_state = "provisioning".into();
    world::machine(client, ns, &spec).await.unwrap()
}

/// The host turns provisioned, with `status` merged into what the operator wrote.
async fn provision(client: &kube::Client, ns: &str, m: &CreatedMachine, mut status: Value) {
    status["provisioning"]["state"] = json!("provisioned");
    world::dynamic(client, ns, "metal3.io", "v1alpha1", "BareMetalHost")
        .patch_status(
            &m.spec.host(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .unwrap_or_else(|e| panic!("the released CRD accepts {status}: {e}"));
}

/// The host's Node once its kubelet has posted its status (Ready).
async fn node_of(server: &ApiServer, m: &CreatedMachine) -> Option<Node> {
    any_node_of(server, m).await.filter(|n| {
        n.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The host's Node, whatever its state.
async fn any_node_of(server: &ApiServer, m: &CreatedMachine) -> Option<Node> {
    let nodes: Api<Node> = Api::all(server.client().await.unwrap());
    let mut found = nodes
        .list(&ListParams::default().labels(&format!("{UUID_LABEL}={}", m.host_uid)))
        .await
        .unwrap()
        .items;
    assert!(found.len() <= 1, "one Node per host");
    found.pop()
}

async fn warning(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Event {
    eventually(&format!("a {reason} Event on {name}"), LIMIT, || async {
        events(client, ns, name, reason).await.pop()
    })
    .await
}

/// The acceptance scenario of tolerant reading. The objects the controller cannot read
/// must be ones the released CRDs accept; per kind:
/// - BareMetalHost: `status.operationHistory.provision.end` with 12 fractional digits,
///   which the CRD's `date-time` format admits and a Kubernetes time (nanoseconds) does not.
/// - Metal3Machine, Machine, Cluster: the released schemas admit no value of another
///   shape or range in the fields the controller reads (strings, and a port bounded to
///   1..=65535), so none is written here; the unit tests read such objects from JSON.
/// - Secret: a core kind the API server validates whole; an unusable kubeconfig in it is
///   covered by the canary test below.
/// - KubeadmConfig: read untyped (only its annotations), so nothing in it is unreadable.
///
/// Beside them: values that make no sense (a CPU count of -4, an address that is no IP),
/// and Machine names of 70 and 233 characters.
#[tokio::test]
#[cfg_attr(
    not(envtest),
    ignore = "needs the local control plane: run `make test`"
)]
async fn a_restarted_controller_reads_around_odd_objects_and_stays_quiet() {
    let env = env().await;
    let admin = env.management.client().await.unwrap();
    let ns = unique("tolerant");
    world::namespace(&admin, &ns).await.unwrap();
    let server = &env.workloads[0];
    let workload = admin_yaml(server);
    let mut healthy = Vec::new();
    for c in 0..3 {
        let name = format!("{ns}-ok{c}");
        cluster(&admin, &ns, &name, &workload).await;
        for (suffix, cp) in [("cp-0", true), ("md-0", false)] {
            let m = machine(&admin, &ns, &name, &format!("{name}-{suffix}"), cp).await;
            provision(&admin, &ns, &m, json!({})).await;
            healthy.push(m);
        }
    }
    let odd = format!("{ns}-odd");
    cluster(&admin, &ns, &odd, &workload).await;
    let args = ["--namespace", &ns, "--max-retry-delay", "2s"];
    let mut first = Binary::spawn(&admin_yaml(&env.management), &args, "info");
    eventually("the first controller ready", LIMIT, || async {
        first.ready().await.then_some(())
    })
    .await;
    for m in &healthy {
        eventually("a healthy machine's Node", LIMIT, || node_of(server, m)).await;
    }

    // Written while the first controller runs: it sees them through its watches.
    let poison = machine(&admin, &ns, &odd, &format!("{odd}-cp-0"), true).await;
    provision(
        &admin,
        &ns,
        &poison,
        json!({"hardware": {"cpu": {"arch": "x86_64", "count": -4},
                            "nics": [{"ip": "not-an-ip", "name": "enp1s0", "mac": "00:60:2f:31:81:01"}]}}),
    )
    .await;
    let unreadable = machine(&admin, &ns, &odd, &format!("{odd}-md-0"), false).await;
    provision(
        &admin,
        &ns,
        &unreadable,
        json!({"operationHistory": {"provision": {"end": "2026-12-02T10:00:00.123456789012Z"}}}),
    )
    .await;
    let seventy = format!("{odd}-{}", "m".repeat(69 - odd.len()));
    assert_eq!(seventy.len(), 70);
    let long = machine(&admin, &ns, &odd, &seventy, false).await;
    provision(&admin, &ns, &long, json!({})).await;
    let head = format!("{odd}-cp.");
    let dotted = format!("{head}{}.example.com", "d".repeat(233 - head.len() - 12));
    assert_eq!(dotted.len(), 233);
    let longer = machine(&admin, &ns, &odd, &dotted, true).await;
    provision(&admin, &ns, &longer, json!({})).await;

    let node = eventually("the -4 CPU host's Node", LIMIT, || node_of(server, &poison)).await;
    let status = node.status.unwrap();
    assert_eq!(
        status.capacity.unwrap()["cpu"].0,
        "4",
        "the default CPU count"
    );
    let created = warning(&admin, &ns, &poison.spec.name, "FakeNodeCreated").await;
    let note = created.note.unwrap_or_default();
    assert!(
        note.contains("cpu.count=-4") && note.contains("not-an-ip"),
        "the Event says what was ignored: {note}"
    );
    let e = warning(&admin, &ns, &unreadable.spec.name, "HostUnreadable").await;
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    let note = e.note.unwrap_or_default();
    assert!(
        note.contains("status.operationHistory.provision.end"),
        "{note}"
    );
    for m in [&long, &longer] {
        let e = warning(&admin, &ns, &m.spec.name, "NodeNameInvalid").await;
        let note = e.note.unwrap_or_default();
        assert!(
            note.contains(&format!("({} characters)", m.spec.name.len())),
            "{note}"
        );
        assert!(any_node_of(server, m).await.is_none());
    }

    // The restart: every list now holds the odd objects.
    first.signal(libc::SIGTERM);
    assert!(
        first.exit_within(LIMIT).await.is_some(),
        "the first controller stops"
    );
    let started = Instant::now();
    let second = Binary::spawn(&admin_yaml(&env.management), &args, "info");
    eventually(
        "the restarted controller ready within 10 s",
        Duration::from_secs(10),
        || async { second.ready().await.then_some(()) },
    )
    .await;
    println!(
        "ready {:.1} s after its start",
        started.elapsed().as_secs_f64()
    );
    // A machine written now can only get its Node from the restarted controller.
    let late = machine(
        &admin,
        &ns,
        &format!("{ns}-ok0"),
        &format!("{ns}-ok0-md-1"),
        false,
    )
    .await;
    provision(&admin, &ns, &late, json!({})).await;
    for m in healthy.iter().chain([&late, &poison]) {
        eventually("every healthy machine's Node", LIMIT, || node_of(server, m)).await;
    }
    assert!(any_node_of(server, &unreadable).await.is_none());
    // Each affected machine waits for its object to change: no retry on a timer (with
    // --max-retry-delay 2s, a retried one would count several more in 10 s). The start
    // wakes each a few times (once per watch that lists one of its objects).
    let counts = |metrics: String| {
        ["node_name_invalid", "host_unreadable"].map(|reason| {
            sample(
                &metrics,
                "fakenode_reconcile_errors_total",
                &[("reason", reason)],
            )
            .unwrap_or(0.0)
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = counts(second.metrics().await);
    assert!(before[0] >= 2.0 && before[1] >= 1.0, "{before:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let metrics = second.metrics().await;
    assert_eq!(counts(metrics.clone()), before, "retried on a timer");
    assert_eq!(
        sample(
            &metrics,
            "fakenode_unreadable_objects",
            &[("resource", "baremetalhosts")]
        ),
        Some(1.0)
    );

    // The log of the first 60 s: bounded, however odd the objects.
    let window = Duration::from_secs(60).saturating_sub(started.elapsed());
    tokio::time::sleep(window).await;
    let lines = second.lines();
    let total: usize = lines.iter().map(|l| l.len() + 1).sum();
    let longest = lines.iter().map(String::len).max().unwrap_or(0);
    println!(
        "log of the first 60 s: {total} bytes in {} lines, the longest {longest} bytes",
        lines.len()
    );
    assert!(total < 256 * 1024, "{total} bytes of log in 60 s");
    assert!(longest <= 4096, "a log line of {longest} bytes");
    assert!(
        lines.iter().any(|l| l.contains("cannot read this object")),
        "the unreadable host is said in the log"
    );
}
