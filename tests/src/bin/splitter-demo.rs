//! `cargo xtask demo [--fast] [--keep]`: a blue-green cutover and a canary rollout, live, in
//! network namespaces of this machine (root needed). See `splitter_tests::demo`.

use std::process::ExitCode;

use splitter_tests::demo::{self, Options, interrupt};

const USAGE: &str = "\
usage: splitter-demo [--fast] [--keep]

Shows the splitter at work in network namespaces of this machine (needs root): all traffic on
blue, a canary rollout of green, blue-green switches under long-lived connections, and a bad
green rolled back automatically. Ends with a summary (and a `SUMMARY {json}` line) and removes
everything it built, also on Ctrl-C.

  --fast   short steps (about 30 s; what CI runs)
  --keep   leave the lab running after the walk, with instructions to poke at it, until Ctrl-C

Exit codes: 0 everything went as promised, 1 something did not (see the summary),
2 bad usage, 130 interrupted.";

fn main() -> ExitCode {
    let mut options = Options::default();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--fast" => options.fast = true,
            "--keep" => options.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("splitter-demo: unknown argument `{other}`\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "splitter-demo: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network \
             namespaces and load the XDP/TC programs; run `sudo -E cargo xtask demo`"
        );
        return ExitCode::FAILURE;
    }
    interrupt::install();
    let summary = demo::run(options);
    if summary.interrupted {
        ExitCode::from(130)
    } else if summary.problems().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
