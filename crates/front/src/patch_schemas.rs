//! How strategic merge patches merge each kind's lists, read from the backing server's
//! OpenAPI v3 document of the kind's group-version: the same `x-kubernetes-patch-strategy`
//! and `x-kubernetes-patch-merge-key` facts the kube-apiserver merges by. Each kind's
//! schema is built once and shared by every cluster; a failed read is not remembered, so
//! the next patch tries again.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::ACCEPT;
use http::{Method, Request};
use serde_json::Value;
use strategic_merge::Schema;
use tokio::sync::{Mutex, OnceCell};

use crate::error::{Error, Result};

/// (group, version, kind).
type Key = (&'static str, String, &'static str);

/// The schemas of the kinds patched so far.
pub struct PatchSchemas {
    backing: kube::Client,
    kinds: Mutex<HashMap<Key, Arc<OnceCell<Arc<Schema>>>>>,
}

impl PatchSchemas {
    pub fn new(backing: kube::Client) -> PatchSchemas {
        PatchSchemas {
            backing,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// The schema of one kind, read from the backing server the first time it is asked
    /// for (concurrent first patches of a kind wait for one read).
    pub async fn schema(
        &self,
        group: &'static str,
        version: &str,
        kind: &'static str,
    ) -> Result<Arc<Schema>> {
        let cell = {
            let mut kinds = self.kinds.lock().await;
            kinds
                .entry((group, version.to_string(), kind))
                .or_default()
                .clone()
        };
        cell.get_or_try_init(|| async {
            let document = self.document(group, version).await?;
            let schema = Schema::from_openapi_v3(&document, group, version, kind)
                .map_err(Error::PatchSchema)?;
            tracing::debug!(group, version, kind, "strategic merge schema read");
            Ok(Arc::new(schema))
        })
        .await
        .cloned()
    }

    async fn document(&self, group: &str, version: &str) -> Result<Value> {
        let path = openapi_path(group, version);
        let request = Request::builder()
            .method(Method::GET)
            .uri(&path)
            .header(ACCEPT, "application/json")
            .body(kube::client::Body::empty())
            .map_err(|e| Error::Backing(kube::Error::HttpError(e)))?;
        let answer = self.backing.send(request).await?;
        let status = answer.status();
        let bytes = answer.into_body().collect_bytes().await?;
        if !status.is_success() {
            return Err(Error::BackingRefused {
                what: "the OpenAPI document",
                status: status.as_u16(),
                message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::BackingNotJson {
            status: status.as_u16(),
            message: e.to_string(),
        })
    }
}

/// Where the API server serves a group-version's OpenAPI v3 document.
fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/openapi/v3/api/{version}")
    } else {
        format!("/openapi/v3/apis/{group}/{version}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_group_is_under_api_and_the_others_under_apis() {
        assert_eq!(openapi_path("", "v1"), "/openapi/v3/api/v1");
        assert_eq!(
            openapi_path("coordination.k8s.io", "v1"),
            "/openapi/v3/apis/coordination.k8s.io/v1"
        );
    }
}
