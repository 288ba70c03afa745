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

#[cfg(test)]
mod tests {
    use super::*;

    /// The portal loads nothing from elsewhere (the machines it runs on may have no
    /// internet): no absolute URL in any asset but the SVG namespace, which is a name, not
    /// a fetch.
    #[test]
    fn assets_reference_nothing_outside_the_gateway() {
        for (name, text) in [("index.html", INDEX), ("app.js", APP_JS), ("style.css", STYLE)] {
            let stripped = text.replace("http://www.w3.org/2000/svg", "");
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(!stripped.contains(scheme), "{name} refers to {scheme}");
            }
            assert!(asset(name).is_some(), "{name} is served");
        }
        assert!(asset("missing.js").is_none());
    }
}
