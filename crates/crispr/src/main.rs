//! The `crispr` command line.

mod cli;

fn main() {
    crispr::sys::tune_allocator();
    if let Err(e) = cli::run() {
        // One line naming the file and the problem; the chain of causes follows on the same line.
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            msg.push_str(": ");
            msg.push_str(&cause.to_string());
        }
        eprintln!("crispr: error: {msg}");
        std::process::exit(2);
    }
}
