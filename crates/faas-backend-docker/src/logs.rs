//! Logs from the containers' log streams, one stream per instance, merged.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::query_parameters::LogsOptions;
use faas_core::spec::rfc3339;
use faas_core::{Error, LogEntry, LogStream, LogsRequest, Result};
use futures::{StreamExt, TryStreamExt};

use crate::engine::map_err;
use crate::inner::Inner;

/// Splits one chunk of `docker logs --timestamps` output into entries.
fn entries(function: &str, namespace: &str, instance: &str, chunk: &[u8]) -> Vec<LogEntry> {
    String::from_utf8_lossy(chunk)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (ts, text) = match line.split_once(' ') {
                Some((ts, text)) => match rfc3339::parse(ts) {
                    Ok(t) => (t, text),
                    Err(_) => (SystemTime::now(), line),
                },
                None => (SystemTime::now(), line),
            };
            LogEntry {
                name: function.to_string(),
                namespace: namespace.to_string(),
                instance: instance.to_string(),
                timestamp: ts,
                text: text.to_string(),
            }
        })
        .collect()
}

impl Inner {
    pub(crate) async fn logs(self: &Arc<Self>, req: LogsRequest) -> Result<LogStream> {
        let fref = req
            .function
            .clone()
            .ok_or_else(|| Error::invalid("name", "a function name is required"))?;
        let f = self.function(&fref)?;
        let replicas: Vec<_> = f
            .snapshot()
            .into_iter()
            .filter(|r| req.instance.as_deref().is_none_or(|i| i == r.name || r.id.starts_with(i)))
            .collect();
        let since_secs = req
            .since
            .and_then(|s| s.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs().min(i32::MAX as u64) as i32)
            .unwrap_or(0);
        let opts = LogsOptions {
            follow: req.follow,
            stdout: true,
            stderr: true,
            since: since_secs,
            until: 0,
            timestamps: true,
            tail: req.tail.map(|n| n.to_string()).unwrap_or_else(|| "all".to_string()),
        };
        let since = req.since;
        let keep = move |e: &LogEntry| since.is_none_or(|s| e.timestamp >= s);
        let streams: Vec<LogStream> = replicas
            .iter()
            .map(|r| {
                let (name, ns, inst) = (fref.name.clone(), fref.namespace.clone(), r.name.clone());
                self.docker
                    .logs(&r.id, Some(opts.clone()))
                    .map_err(|e| map_err("container logs", e))
                    .map_ok(move |chunk| {
                        futures::stream::iter(
                            entries(&name, &ns, &inst, &chunk.into_bytes()).into_iter().map(Ok),
                        )
                    })
                    .try_flatten()
                    .boxed()
            })
            .collect();
        if req.follow {
            // Start every instance's request now (streams are lazy), forwarding into one
            // channel; the tasks end when the caller drops the stream.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<LogEntry>>(1024);
            for mut s in streams {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(item) = s.next().await {
                        if item.as_ref().is_ok_and(|e| !keep(e)) {
                            continue;
                        }
                        if tx.send(item).await.is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            return Ok(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            })
            .boxed());
        }
        let mut all = Vec::new();
        for s in streams {
            let mut v: Vec<LogEntry> = s.try_collect().await?;
            all.append(&mut v);
        }
        all.retain(|e| keep(e));
        all.sort_by_key(|e| e.timestamp);
        if let Some(n) = req.tail {
            let skip = all.len().saturating_sub(n);
            all.drain(..skip);
        }
        Ok(futures::stream::iter(all.into_iter().map(Ok)).boxed())
    }
}
