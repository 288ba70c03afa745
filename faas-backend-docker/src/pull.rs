//! Image pulls: an image absent from the engine is pulled from its registry, with the
//! progress in the log (one line per layer state, not per progress tick), and the registry's
//! error returned naming the image, so a deploy of an image no registry serves fails at once
//! and clearly instead of retrying.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use faas_core::{Error, Result};
use futures::StreamExt;

use crate::engine::{is_unreachable, map_err, status_of};

/// How long one pull may take before it is given up.
pub(crate) const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// Splits `repo[:tag]` (a digest `repo@sha256:...` stays whole) into what the engine's pull
/// takes; no tag means `latest` (else the engine would pull every tag).
fn split_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    // A colon after the last slash is a tag; one before it is a registry's port.
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (&image[..i], &image[i + 1..]),
        _ => (image, "latest"),
    }
}

/// Pulls `image` when the engine does not have it. `Ok(true)` when it was pulled,
/// `Ok(false)` when it was present; the registry's refusal (unknown image, no such
/// registry, denied) is an [`Error::InvalidSpec`] of `image` with the registry's words.
pub(crate) async fn ensure_image(docker: &Docker, image: &str) -> Result<bool> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(false),
        Err(e) if status_of(&e) == Some(404) => {}
        Err(e) => return Err(map_err("image inspect", e)),
    }
    match tokio::time::timeout(PULL_TIMEOUT, pull(docker, image)).await {
        Ok(r) => r.map(|()| true),
        Err(_) => Err(Error::unavailable(format!(
            "pulling image {image:?} took longer than {}",
            faas_core::util::format_duration(PULL_TIMEOUT)
        ))),
    }
}

/// Pulls `image`, logging each layer's state changes.
pub(crate) async fn pull(docker: &Docker, image: &str) -> Result<()> {
    let (repo, tag) = split_reference(image);
    tracing::info!(image, "pulling the image");
    let opts = CreateImageOptions {
        from_image: Some(repo.to_string()),
        tag: (!tag.is_empty()).then(|| tag.to_string()),
        ..Default::default()
    };
    let mut last: HashMap<String, String> = HashMap::new();
    let mut s = docker.create_image(Some(opts), None, None);
    while let Some(item) = s.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    return Err(refused(image, &detail));
                }
                let status = info.status.unwrap_or_default();
                let id = info.id.unwrap_or_default();
                // "Downloading"/"Extracting" repeat with every progress tick: log changes only.
                if last.get(&id) != Some(&status) {
                    tracing::info!(image, layer = %id, "{status}");
                    last.insert(id, status);
                }
            }
            Err(e) if is_unreachable(&e) => return Err(map_err("image pull", e)),
            Err(e) => return Err(refused(image, &engine_message(&e))),
        }
    }
    tracing::info!(image, "pulled");
    Ok(())
}

fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

fn refused(image: &str, message: &str) -> Error {
    Error::invalid(
        "image",
        format!("image {image:?} is not in the engine and its pull failed: {message}"),
    )
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(split_reference("127.0.0.1:5000/a/b"), ("127.0.0.1:5000/a/b", "latest"));
        assert_eq!(split_reference("127.0.0.1:5000/a/b:v2"), ("127.0.0.1:5000/a/b", "v2"));
        let d = "r/a@sha256:0123";
        assert_eq!(split_reference(d), (d, ""));
    }
}
