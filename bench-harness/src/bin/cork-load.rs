//! `cork-load`: placeholder until the load generator lands.
fn main() {
    eprintln!("cork-load: not written yet");
    std::process::exit(2);
}
