//! Route requests from the command line against catalog directories.
//!
//! ```text
//! cargo run --release -p plexus-router --example route -- CATALOG_DIR... -- "request" ["request"...]
//! ```
//!
//! Prints the readable explanation of each decision (the form `plexus route`
//! prints by default). A request line given as `-` reads requests from stdin,
//! one a line.

use plexus_catalog::{Catalog, Sources};
use plexus_router::{RouteRequest, Router};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let (dirs, rest) = args.split_at(split);
    let mut texts: Vec<String> = rest.iter().skip(1).cloned().collect();
    if texts.iter().any(|t| t == "-") {
        texts = std::io::stdin()
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.trim().is_empty())
            .collect();
    }
    if dirs.is_empty() || texts.is_empty() {
        eprintln!("usage: route CATALOG_DIR... -- \"request\"...");
        std::process::exit(2);
    }
    let catalog = Catalog::load(&Sources {
        embedded: vec![],
        dirs: dirs.iter().map(Into::into).collect(),
    });
    let router = Router::new(&catalog);
    for t in texts {
        println!("{}\n", router.route(&RouteRequest::new(t)));
    }
}
