//! Pure builders of the objects a real host's kubelet and kubeadm would have left in the
//! workload cluster. Input: plain facts about the machine; output: k8s-openapi objects.

pub mod kubeadm_config;
pub mod lease;
pub mod names;
pub mod node;
pub mod static_pods;

/// Marks every object metal3-fakenode creates, so that it only ever touches its own.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "metal3-fakenode";

/// `app.kubernetes.io/managed-by=metal3-fakenode`, as a label selector.
pub fn managed_by_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Whether an object carries our managed-by label.
pub fn is_ours(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

/// A hash that is the same in every build and on every machine (unlike std's hasher), so
/// that what is derived from it (fake addresses, which machines get a fault) survives
/// restarts and upgrades: FNV-1a, then a finaliser that spreads similar inputs apart.
pub fn stable_hash(seed: &str) -> u64 {
    // MurmurHash3's 64-bit finaliser.
    let mut h = fnv1a(seed);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// FNV-1a: stable across Rust versions, unlike std's hasher.
pub fn fnv1a(seed: &str) -> u64 {
    seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A stable number in [0, 1) for `seed`.
pub fn stable_share(seed: &str) -> f64 {
    // The top 53 bits: exactly representable in an f64.
    (stable_hash(seed) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_shares_are_fixed_and_spread_evenly() {
        // Fixed forever: fault injection and jitter depend on it across versions.
        assert_eq!(stable_hash(""), stable_hash(""));
        assert_ne!(stable_hash("a"), stable_hash("b"));
        let n = 20_000;
        let mut buckets = [0usize; 10];
        for i in 0..n {
            let s = stable_share(&format!("6f1c2a00-0000-4000-8000-{i:012}"));
            assert!((0.0..1.0).contains(&s));
            buckets[(s * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((1800..2200).contains(&b), "{buckets:?}");
        }
    }
}
