//! The portal at `/ui/`: plain HTML, CSS and vanilla JS embedded in the binary.

use faas_core::Response;

use crate::response;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

/// The asset at `path` (relative to `/ui/`).
pub(crate) fn asset(path: &str) -> Option<Response> {
    match path {
        "" | "index.html" => Some(response::asset("text/html; charset=utf-8", INDEX)),
        "app.js" => Some(response::asset("text/javascript; charset=utf-8", APP_JS)),
        "style.css" => Some(response::asset("text/css; charset=utf-8", STYLE)),
        _ => None,
    }
}
