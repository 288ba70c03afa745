//! Parameters as OpenWhisk merges them: the package's defaults (a binding's over its
//! package's), then the action's, then the trigger's, then the event's or the caller's,
//! each later one winning — except that an action annotated `final` keeps every parameter
//! its package or itself defines: a caller that sends one is refused with OpenWhisk's 400,
//! and a trigger's or event's value for one is ignored.

use serde_json::{Map, Value};

use super::entity::{truthy, KeyValue};
use crate::error::{Error, Result};

/// OpenWhisk's message for a request that sets a parameter it may not.
pub const PARAMETERS_NOT_ALLOWED: &str =
    "Request defines parameters that are not allowed (e.g., reserved properties).";

/// The parameters an action is bound to: its packages' defaults, then its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bound {
    /// The merged defaults.
    pub params: Map<String, Value>,
    /// Whether the action is annotated `final`.
    pub is_final: bool,
}

impl Bound {
    /// `layers` merged in order (package, binding, action); `annotations` are the action's.
    pub fn new(layers: &[&[KeyValue]], annotations: &[KeyValue]) -> Self {
        let mut params = Map::new();
        for layer in layers {
            for kv in *layer {
                params.insert(kv.key.clone(), kv.value.clone());
            }
        }
        Bound { params, is_final: truthy(annotations, "final") }
    }

    /// The parameters an invocation runs with: these defaults with `overrides` merged over
    /// them in order (the trigger's, then the event's or caller's). For a `final` action,
    /// an override of a bound parameter is an error if `refuse` (a caller's request), else
    /// ignored (a trigger's firing).
    pub fn merge(
        &self,
        overrides: &[&Map<String, Value>],
        refuse: bool,
    ) -> Result<Map<String, Value>> {
        let mut out = self.params.clone();
        for layer in overrides {
            for (k, v) in layer.iter() {
                if self.is_final && self.params.contains_key(k) {
                    if refuse {
                        return Err(Error::invalid("parameters", PARAMETERS_NOT_ALLOWED));
                    }
                    continue;
                }
                out.insert(k.clone(), v.clone());
            }
        }
        Ok(out)
    }

    /// As [`Bound::merge`] with one layer of overrides taken by value (a trigger's or a
    /// sequence's, so ignored rather than refused for a `final` action): with no bound
    /// parameters, `overrides` as they are.
    pub fn merge_owned(&self, overrides: Map<String, Value>) -> Map<String, Value> {
        if self.params.is_empty() {
            return overrides;
        }
        let mut out = self.params.clone();
        for (k, v) in overrides {
            if !(self.is_final && self.params.contains_key(&k)) {
                out.insert(k, v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kvs(v: Value) -> Vec<KeyValue> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| KeyValue { key: k.clone(), value: v.clone() })
            .collect()
    }

    #[test]
    fn later_layers_win_in_openwhisk_order() {
        let package = kvs(json!({"a": "package", "b": "package", "c": "package", "d": "package"}));
        let action = kvs(json!({"b": "action", "c": "action", "d": "action"}));
        let bound = Bound::new(&[&package, &action], &[]);
        let trigger = json!({"c": "trigger", "d": "trigger"}).as_object().unwrap().clone();
        let event = json!({"d": "event"}).as_object().unwrap().clone();
        let out = bound.merge(&[&trigger, &event], true).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"a":"package","b":"action","c":"trigger","d":"event"})
        );
    }

    #[test]
    fn final_parameters_cannot_be_overridden() {
        let action = kvs(json!({"token": "bound"}));
        let annotations = kvs(json!({"final": true}));
        let bound = Bound::new(&[&action], &annotations);
        let caller = json!({"token": "mine", "x": 1}).as_object().unwrap().clone();
        let e = bound.merge(&[&caller], true).unwrap_err();
        assert_eq!(e.http_status(), 400);
        assert!(e.to_string().contains(PARAMETERS_NOT_ALLOWED));
        // A trigger's value is ignored; new parameters still pass.
        let out = bound.merge(&[&caller], false).unwrap();
        assert_eq!(Value::Object(out), json!({"token": "bound", "x": 1}));
        assert_eq!(
            Value::Object(bound.merge_owned(caller.clone())),
            json!({"token": "bound", "x": 1})
        );
        // Without `final`, the caller wins.
        let open = Bound::new(&[&action], &[]);
        assert_eq!(open.merge(&[&caller], true).unwrap()["token"], "mine");
        assert_eq!(open.merge_owned(caller.clone())["token"], "mine");
        assert_eq!(Bound::default().merge_owned(caller.clone()), caller);
    }
}
