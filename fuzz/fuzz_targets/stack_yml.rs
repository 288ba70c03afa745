//! stack.yml parsing: [`faas_http::stack::Stack::parse`] and the specs it gives, on any
//! text. Errors are fine; panics, hangs and runaway memory are not.
#![no_main]

use faas_http::stack::Stack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(stack) = Stack::parse(text) else { return };
    if let Ok(specs) = stack.specs() {
        for spec in specs {
            // What the parser accepted validates again, and survives a JSON round trip.
            if let Err(e) = spec.validate() {
                panic!("a spec from stack.yml does not validate: {e}: {spec:?}");
            }
            let json = serde_json::to_vec(&spec).expect("a spec serializes");
            let back: faas_core::FunctionSpec = match serde_json::from_slice(&json) {
                Ok(b) => b,
                Err(e) => {
                    panic!("a spec does not read back ({e}): {}", String::from_utf8_lossy(&json))
                }
            };
            assert_eq!(back.name, spec.name);
        }
    }
});
