//! `cargo xtask bench`: the data plane's per-packet cost through BPF_PROG_TEST_RUN, printed as
//! the README's table (Markdown) with ratios to the parse-only floor measured in the same run.

use anyhow::Context as _;
use splitter_tests::{
    bench::{Family, Measurement, Options, Path, per_packet},
    bench_replies::{ReplyMeasurement, ReplyPath, reply_paths},
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let repeat = arg("--repeat")
        .map(|r| r.parse())
        .transpose()
        .context("--repeat N")?
        .unwrap_or(1_000_000);
    let rounds = arg("--rounds")
        .map(|r| r.parse())
        .transpose()
        .context("--rounds N")?
        .unwrap_or(3);
    // `--sizes 1000000`: only these flow-table fills (for profiling one of them).
    let table_sizes = match arg("--sizes") {
        Some(list) => list
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()
            .context("--sizes N,N,...")?,
        None => vec![1, 200_000, 1_000_000],
    };
    // `--only churn,miss`: only these paths (and the floors), for profiling or A/B runs.
    let only = match arg("--only") {
        Some(list) => list
            .split(',')
            .map(|name| {
                Path::ALL
                    .into_iter()
                    .find(|path| path.name() == name)
                    .with_context(|| {
                        let names: Vec<&str> = Path::ALL.iter().map(|p| p.name()).collect();
                        format!("--only: no path {name:?}; the paths: {}", names.join(", "))
                    })
            })
            .collect::<anyhow::Result<Vec<Path>>>()?,
        None => Vec::new(),
    };
    let options = Options {
        repeat,
        rounds,
        table_sizes,
        only,
    };
    eprintln!(
        "per-packet cost: BPF_PROG_TEST_RUN, repeat {repeat}, median of {rounds}, through the \
         restoring wrapper"
    );
    let results = per_packet(&options)?;
    print_table(&results);
    if !options.only.is_empty() {
        return Ok(());
    }
    // The reply path rewrites in place: runs of one packet each (see `bench_replies`).
    let runs = repeat.min(20_000);
    eprintln!(
        "reply path (TC egress): BPF_PROG_TEST_RUN, {runs} runs of repeat 1, median of {rounds}"
    );
    let replies = reply_paths(runs, rounds)?;
    print_replies(&replies);
    Ok(())
}

fn print_replies(results: &[ReplyMeasurement]) {
    println!();
    println!("| reply path (TC egress, runs of 1 packet) | family | ns/packet | − floor |");
    println!("|---|---|---:|---:|");
    for v6 in [false, true] {
        let floor = results
            .iter()
            .find(|m| m.v6 == v6 && m.path == ReplyPath::Floor)
            .map_or(f64::NAN, |m| m.ns_per_packet);
        for m in results.iter().filter(|m| m.v6 == v6) {
            println!(
                "| {} | {} | {:.1} | {:+.1} |",
                m.path.label(),
                if v6 { "IPv6" } else { "IPv4" },
                m.ns_per_packet,
                m.ns_per_packet - floor
            );
        }
    }
}

fn find(results: &[Measurement], path: Path, family: Family, flows: u32) -> Option<f64> {
    results
        .iter()
        .find(|m| m.path == path && m.family == family && m.flows_in_table == flows)
        .map(|m| m.ns_per_packet)
}

fn print_table(results: &[Measurement]) {
    let mut sizes: Vec<u32> = results.iter().map(|m| m.flows_in_table).collect();
    sizes.dedup();
    println!("| path | family | flows in table | ns/packet | × parse-only floor |");
    println!("|---|---|---:|---:|---:|");
    for &flows in &sizes {
        for family in [Family::V4, Family::V6] {
            let floor = find(results, Path::ParseFloor, family, flows).unwrap_or(f64::NAN);
            for m in results
                .iter()
                .filter(|m| m.family == family && m.flows_in_table == flows)
            {
                println!(
                    "| {} | {} | {} | {:.1} | {:.2} |",
                    m.path.label(),
                    match family {
                        Family::V4 => "IPv4",
                        Family::V6 => "IPv6",
                    },
                    flows,
                    m.ns_per_packet,
                    m.ns_per_packet / floor
                );
            }
        }
    }
}
