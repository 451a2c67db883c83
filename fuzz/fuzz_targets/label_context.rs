//! Context::parse → to_string → parse must give the same context, and the canonical
//! text must be a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svirt_labels::Context;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Context::parse(text) else { return };
    let canon = c.to_string();
    let again = match Context::parse(&canon) {
        Ok(a) => a,
        Err(e) => panic!("canonical form {canon:?} of {text:?} does not parse: {e}"),
    };
    assert_eq!(again, c, "reparse of {canon:?}");
    assert_eq!(
        again.to_string(),
        canon,
        "canonical form is not a fixed point"
    );
});
