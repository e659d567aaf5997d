//! sipload: the SIP load generator (filled in by the load-generator work).
fn main() {
    println!("sipload {}", env!("CARGO_PKG_VERSION"));
}
