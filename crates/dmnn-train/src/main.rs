//! dmnn
fn main() {}
