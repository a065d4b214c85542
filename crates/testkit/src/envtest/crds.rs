//! Installs the upstream CRDs (CAPI, CAPM3, baremetal-operator) from the assets directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};

use super::{Assets, EnvtestError, io_err};

const FIELD_MANAGER: &str = "metal3-fakenode-envtest";

/// Every CRD file under the assets' `crds/` directory, sorted for a stable order.
pub fn crd_files(assets: &Assets) -> Result<Vec<PathBuf>, EnvtestError> {
    let mut files = Vec::new();
    collect_yaml(&assets.crd_dir(), &mut files)?;
    files.sort();
    Ok(files)
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), EnvtestError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(format!("reading {}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(io_err(format!("reading {}", dir.display())))?
            .path();
        if path.is_dir() {
            collect_yaml(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    Ok(())
}

pub fn read_crd(path: &Path) -> Result<CustomResourceDefinition, EnvtestError> {
    let text =
        std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
    serde_saphyr::from_str(&text).map_err(|e| EnvtestError::Crd {
        file: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Applies every CRD (server-side apply, so re-installing is harmless) and waits until
/// each is Established. Returns the CRD names.
pub async fn install(client: &kube::Client, assets: &Assets) -> Result<Vec<String>, EnvtestError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for file in crd_files(assets)? {
        let crd = read_crd(&file)?;
        let name = crd.metadata.name.clone().ok_or_else(|| EnvtestError::Crd {
            file: file.display().to_string(),
            message: "no metadata.name".into(),
        })?;
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
        names.push(name);
    }
    for name in &names {
        let established = await_condition(api.clone(), name, conditions::is_crd_established());
        match tokio::time::timeout(Duration::from_secs(60), established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(EnvtestError::Crd {
                    file: name.clone(),
                    message: format!("waiting for Established: {e}"),
                });
            }
            Err(_) => {
                return Err(EnvtestError::Crd {
                    file: name.clone(),
                    message: "not Established after 60s".into(),
                });
            }
        }
    }
    Ok(names)
}
