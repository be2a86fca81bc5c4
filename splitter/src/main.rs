use anyhow::Context as _;
use clap::Parser;
use splitter::dataplane::{Dataplane, LoadOptions, XdpMode};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    interface: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut dataplane = Dataplane::load(&LoadOptions::default()).context("loading")?;
    dataplane.attach(&args.interface, XdpMode::Auto)?;
    println!("attached to {}", args.interface);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        for (reason, count) in dataplane.maps.verdicts()? {
            if count > 0 {
                println!("{} {count}", reason.label());
            }
        }
    }
}
