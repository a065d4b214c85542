//! Points the upstream providers' released CRDs and webhook configurations at the loopback
//! webhook servers of local processes. In a cluster, kustomize patches them to reach a
//! Service; here each provider is a process with its own port, so every `clientConfig`
//! becomes a URL on 127.0.0.1 that trusts the harness's CA.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

/// Where one provider's webhook server listens, and the CA that signed its certificate.
#[derive(Clone, Debug)]
pub struct Endpoint<'a> {
    /// Prefix that keeps the configurations of different providers apart: upstream ships
    /// them all under the same names and relies on kustomize's name prefix.
    pub provider: &'a str,
    pub port: u16,
    pub ca_pem: &'a str,
}

impl Endpoint<'_> {
    fn client_config(&self, path: &str) -> Value {
        json!({
            "url": format!("https://127.0.0.1:{}{path}", self.port),
            "caBundle": BASE64.encode(self.ca_pem),
        })
    }
}

/// A CRD whose provider converts it through a webhook (as its kustomization renders it)
/// converts through the provider's loopback endpoint, same path; others are left alone.
pub fn rewrite_conversion(mut crd: Value, endpoint: &Endpoint) -> Value {
    // `pointer_mut`, not indexing: indexing a missing key would insert it.
    if let Some(client) = crd.pointer_mut("/spec/conversion/webhook/clientConfig")
        && let Some(path) = service_path(client)
    {
        *client = endpoint.client_config(&path);
    }
    crd
}

fn service_path(client_config: &Value) -> Option<String> {
    let service = client_config.get("service")?;
    Some(service["path"].as_str().unwrap_or("/").to_string())
}

/// The released admission webhook configuration with every Service reference replaced by
/// the provider's loopback URL (same path), renamed `<provider>-<name>`.
pub fn rewrite_configuration(mut config: Value, endpoint: &Endpoint) -> Value {
    if let Some(name) = config["metadata"]["name"].as_str() {
        config["metadata"]["name"] = json!(format!("{}-{name}", endpoint.provider));
    }
    if let Some(webhooks) = config["webhooks"].as_array_mut() {
        for webhook in webhooks {
            if let Some(path) = service_path(&webhook["clientConfig"]) {
                webhook["clientConfig"] = endpoint.client_config(&path);
            }
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: Endpoint = Endpoint {
        provider: "kubeadm-control-plane",
        port: 9443,
        ca_pem: "CA",
    };

    #[test]
    fn converting_crds_convert_through_the_provider() {
        let crd = json!({"spec": {"conversion": {"strategy": "Webhook", "webhook": {
            "conversionReviewVersions": ["v1"],
            "clientConfig": {"service": {"name": "webhook-service", "namespace": "system",
                "path": "/convert"}},
        }}}});
        let crd = rewrite_conversion(crd, &ENDPOINT);
        assert_eq!(crd["spec"]["conversion"]["strategy"], "Webhook");
        let webhook = &crd["spec"]["conversion"]["webhook"];
        assert_eq!(webhook["conversionReviewVersions"], json!(["v1"]));
        assert_eq!(
            webhook["clientConfig"]["url"],
            "https://127.0.0.1:9443/convert"
        );
        assert_eq!(webhook["clientConfig"]["caBundle"], BASE64.encode("CA"));
        assert!(webhook["clientConfig"]["service"].is_null());
    }

    #[test]
    fn crds_without_a_conversion_webhook_are_left_alone() {
        let crd = json!({"spec": {"versions": [{"name": "v1alpha1"}]}});
        assert_eq!(rewrite_conversion(crd.clone(), &ENDPOINT), crd);
    }

    #[test]
    fn services_become_loopback_urls_with_the_same_path() {
        let config = json!({
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "validating-webhook-configuration"},
            "webhooks": [
                {"name": "a", "clientConfig": {"service": {"name": "webhook-service",
                    "namespace": "system", "path": "/validate-a"}}},
                {"name": "b", "clientConfig": {"service": {"name": "webhook-service",
                    "namespace": "system", "path": "/validate-b"}}},
            ],
        });
        let config = rewrite_configuration(config, &ENDPOINT);
        assert_eq!(
            config["metadata"]["name"],
            "kubeadm-control-plane-validating-webhook-configuration"
        );
        let urls: Vec<&str> = config["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["clientConfig"]["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "https://127.0.0.1:9443/validate-a",
                "https://127.0.0.1:9443/validate-b"
            ]
        );
        assert!(config["webhooks"][0]["clientConfig"]["service"].is_null());
    }
}
