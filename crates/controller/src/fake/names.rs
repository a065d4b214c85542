//! The API server's rules for names and label values, checked before any request so that
//! what it would refuse (422) is decided in the plan, once, instead of retried.

/// A DNS subdomain (RFC 1123): what Node and Pod names must be.
pub const MAX_SUBDOMAIN: usize = 253;
/// A label value's limit: the kubelet's `kubernetes.io/hostname` label is one.
pub const MAX_LABEL_VALUE: usize = 63;

/// Lowercase alphanumerics and '-', starting and ending alphanumeric, dot-separated,
/// at most 253 characters.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= MAX_SUBDOMAIN
        && !name.is_empty()
        && name.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Empty, or at most 63 of alphanumerics, '-', '_' and '.', starting and ending
/// alphanumeric.
pub fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    b.is_empty()
        || (b.len() <= MAX_LABEL_VALUE
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// Why a kubelet could not register a Node named `name`, if it could not: the Node name
/// must be a DNS subdomain, and the kubelet labels the Node `kubernetes.io/hostname=<name>`
/// (its hostname, which kubeadm sets to the node name), a label value of at most 63
/// characters. A real kubelet's registration fails the same way, forever.
pub fn node_name_problem(name: &str) -> Option<String> {
    if !is_dns_subdomain(name) {
        return Some(format!(
            "{} is not a DNS subdomain (lowercase alphanumerics, '-' and '.', at most \
             {MAX_SUBDOMAIN} characters)",
            describe(name)
        ));
    }
    if !is_label_value(name) {
        return Some(format!(
            "{} is too long for the kubernetes.io/hostname label (at most \
             {MAX_LABEL_VALUE} characters)",
            describe(name)
        ));
    }
    None
}

/// A name in a message: whole if short, else its start and its length.
fn describe(name: &str) -> String {
    let chars = name.chars().count();
    if chars <= 80 {
        format!("the name {name:?} ({chars} characters)")
    } else {
        let head: String = name.chars().take(40).collect();
        format!("the name {head:?}... ({chars} characters)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains() {
        for good in ["a", "node-0", "cp.example.com", &"a".repeat(253)] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a_b",
            "é",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn label_values() {
        for good in ["", "a", "A_b.c-D", &"a".repeat(63)] {
            assert!(is_label_value(good), "{good}");
        }
        for bad in ["-a", "a-", "a b", "a/b", &"a".repeat(64)] {
            assert!(!is_label_value(bad), "{bad}");
        }
    }

    #[test]
    fn node_names_a_kubelet_could_not_register() {
        assert_eq!(node_name_problem("test1-cp-x7k2p"), None);
        assert_eq!(node_name_problem(&"a".repeat(63)), None);
        let seventy = "m".repeat(70);
        let problem = node_name_problem(&seventy).unwrap();
        assert!(problem.contains("70 characters") && problem.contains("hostname"));
        let dotted = format!("{}.{}", "a".repeat(116), "b".repeat(116));
        assert_eq!(dotted.len(), 233);
        assert!(
            node_name_problem(&dotted)
                .unwrap()
                .contains("233 characters")
        );
        assert!(
            node_name_problem("Upper")
                .unwrap()
                .contains("DNS subdomain")
        );
    }
}
