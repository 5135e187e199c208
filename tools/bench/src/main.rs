//! `ppn-bench tokens | revocation [options]`: runs one bench and prints its JSON on one line.
#![forbid(unsafe_code)]

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match ppn_bench::cli(&args) {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}
