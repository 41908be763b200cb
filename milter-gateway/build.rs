//! Declares the `fuzzing` cfg (set by cargo-fuzz) so that `#[cfg(any(test, fuzzing))]` on the
//! fuzz oracles is not an unexpected cfg; nothing is generated.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
}
