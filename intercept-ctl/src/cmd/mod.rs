//! One module per verb.
pub mod attach;
pub mod connections;
pub mod detach;
pub mod lab;
pub mod mode;
pub mod reload;
pub mod rotate;
pub mod run;
pub mod scope;
pub mod stats;
pub mod status;
pub mod synack;
pub mod thresholds;

/// What every verb gets from the global options.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// `--json`.
    pub json: bool,
    /// `--netns`.
    pub netns: Option<&'a str>,
}

/// Prints a JSON value on stdout, one document per line.
pub fn print_json(v: &serde_json::Value) {
    println!("{v}");
}
