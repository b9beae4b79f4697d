//! The `crispr` command line.

mod cli;

fn main() {
    crispr::sys::tune_allocator();
    if let Err(e) = cli::run() {
        // The reader of our output went away (`crispr score … | head -1`): nothing is wrong.
        let broken_pipe = e
            .chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe));
        if broken_pipe {
            std::process::exit(0);
        }
        // One line naming the file and the problem; the chain of causes follows on the same line,
        // each only once (a library error's text already includes its source's).
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let text = cause.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
        }
        eprintln!("crispr: error: {msg}");
        std::process::exit(2);
    }
}
