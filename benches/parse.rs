//! Parse benches (filled in below).
fn main() {}
