//! The `sipedge` binary.
fn main() {
    println!("sipedge {}", env!("CARGO_PKG_VERSION"));
}
