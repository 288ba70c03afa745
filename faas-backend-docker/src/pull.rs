//! Image pulls: an image absent from the engine is pulled from its registry, with the
//! progress in the log (one line per layer state, not per progress tick) and in a
//! [`PullTracker`] (bytes and layers, which the function's status reports while its deploy
//! pulls: [`faas_core::FunctionStatus::pull`]), and the registry's error returned naming
//! the image, so a deploy of an image no registry serves fails at once and clearly instead
//! of retrying.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use faas_core::{Error, PullProgress, Result};
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
/// `tracker` follows the pull.
pub(crate) async fn ensure_image(
    docker: &Docker,
    image: &str,
    tracker: &SharedTracker,
) -> Result<bool> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(false),
        Err(e) if status_of(&e) == Some(404) => {}
        Err(e) => return Err(map_err("image inspect", e)),
    }
    match tokio::time::timeout(PULL_TIMEOUT, pull(docker, image, tracker)).await {
        Ok(r) => r.map(|()| true),
        Err(_) => Err(Error::unavailable(format!(
            "pulling image {image:?} took longer than {}",
            faas_core::util::format_duration(PULL_TIMEOUT)
        ))),
    }
}

/// A [`PullTracker`] shared between a pull and the status reads that report it.
pub(crate) type SharedTracker = Arc<Mutex<PullTracker>>;

/// Bytes and layers of one pull, from the engine's progress messages.
#[derive(Debug, Clone)]
pub(crate) struct PullTracker {
    image: String,
    layers: BTreeMap<String, Layer>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Layer {
    downloaded: u64,
    total: u64,
    done: bool,
}

impl PullTracker {
    /// A pull of `image` with no layer known yet.
    pub(crate) fn new(image: &str) -> Self {
        PullTracker { image: image.to_string(), layers: BTreeMap::new() }
    }

    /// Takes one progress message of the engine: layer `id` in `status`, with the
    /// message's `current` and `total` bytes where it has them. Messages that are not a
    /// layer's (`Pulling from ...`, whose id is the tag; `Digest: ...`) change nothing.
    pub(crate) fn apply(
        &mut self,
        id: &str,
        status: &str,
        current: Option<i64>,
        total: Option<i64>,
    ) {
        const LAYER_STATES: [&str; 9] = [
            "Pulling fs layer",
            "Waiting",
            "Downloading",
            "Verifying Checksum",
            "Download complete",
            "Extracting",
            "Pull complete",
            "Already exists",
            "Retrying",
        ];
        if id.is_empty() || !LAYER_STATES.iter().any(|s| status.starts_with(s)) {
            return;
        }
        let bytes = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        let layer = self.layers.entry(id.to_string()).or_default();
        if status.starts_with("Downloading") {
            if let Some(t) = bytes(total) {
                layer.total = layer.total.max(t);
            }
            if let Some(c) = bytes(current) {
                layer.downloaded = c.min(layer.total.max(c));
            }
        } else if status.starts_with("Already exists") {
            layer.done = true;
        } else if status.starts_with("Verifying")
            || status.starts_with("Download complete")
            || status.starts_with("Extracting")
        {
            layer.downloaded = layer.total;
        } else if status.starts_with("Pull complete") {
            layer.downloaded = layer.total;
            layer.done = true;
        }
    }

    /// The pull so far.
    pub(crate) fn progress(&self) -> PullProgress {
        let mut p = PullProgress::new(self.image.clone());
        for l in self.layers.values() {
            p.downloaded_bytes += l.downloaded;
            p.total_bytes += l.total;
            p.layers += 1;
            p.layers_done += u32::from(l.done);
        }
        p
    }
}

/// Pulls `image`, logging each layer's state changes and counting its bytes in `tracker`.
pub(crate) async fn pull(docker: &Docker, image: &str, tracker: &SharedTracker) -> Result<()> {
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
                let (current, total) =
                    info.progress_detail.map_or((None, None), |d| (d.current, d.total));
                tracker
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply(&id, &status, current, total);
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
    use super::{split_reference, PullTracker};

    /// The engine's messages of a pull of two layers (one already present) add up to the
    /// bytes and layers the status reports, the total growing as layers announce sizes.
    #[test]
    fn the_tracker_counts_bytes_and_layers_from_the_engines_messages() {
        let mut t = PullTracker::new("r/a:1");
        t.apply("1", "Pulling from r/a", None, None);
        t.apply("aaa", "Already exists", None, None);
        t.apply("bbb", "Pulling fs layer", None, None);
        t.apply("ccc", "Waiting", None, None);
        let p = t.progress();
        assert_eq!((p.layers, p.layers_done, p.downloaded_bytes, p.total_bytes), (3, 1, 0, 0));
        t.apply("bbb", "Downloading", Some(1000), Some(4000));
        t.apply("ccc", "Downloading", Some(0), Some(6000));
        let p = t.progress();
        assert_eq!((p.downloaded_bytes, p.total_bytes), (1000, 10_000));
        assert_eq!(p.image, "r/a:1");
        t.apply("bbb", "Download complete", None, None);
        t.apply("bbb", "Extracting", Some(32_768), Some(4000));
        t.apply("ccc", "Downloading", Some(3000), Some(6000));
        let p = t.progress();
        assert_eq!((p.downloaded_bytes, p.total_bytes, p.layers_done), (7000, 10_000, 1));
        t.apply("bbb", "Pull complete", None, None);
        t.apply("ccc", "Pull complete", None, None);
        t.apply("", "Digest: sha256:0123", None, None);
        t.apply("", "Status: Downloaded newer image for r/a:1", None, None);
        let p = t.progress();
        assert_eq!(
            (p.downloaded_bytes, p.total_bytes, p.layers, p.layers_done),
            (10_000, 10_000, 3, 3)
        );
    }

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
