//! `coldstream token`: the bearer token of a fridge, a back-office client
//! or an analyst.

use anyhow::bail;
use coldstream_sources::auth::{Principal, now_s};

use super::KeyArgs;

/// Whose token, and for how long.
#[derive(clap::Args)]
pub struct Args {
    /// A fridge id.
    #[arg(long, conflicts_with_all = ["back_office", "analyst"], required_unless_present_any = ["back_office", "analyst"])]
    pub fridge: Option<String>,
    /// A back-office client id.
    #[arg(long, conflicts_with = "analyst")]
    pub back_office: Option<String>,
    /// An analyst's name: the token queries the Flight SQL endpoint and
    /// sends no events.
    #[arg(long)]
    pub analyst: Option<String>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Days the token is valid.
    #[arg(long, default_value_t = 365)]
    pub valid_days: u64,
    /// The old form (the bare HMAC of the name), for a server that still
    /// accepts it (`auth.legacy_tokens`); it never expires.
    #[arg(long)]
    pub legacy: bool,
}

/// Prints the token.
pub fn run(args: Args) -> anyhow::Result<()> {
    let principal = match (&args.fridge, &args.back_office, &args.analyst) {
        (Some(id), _, _) => Principal::fridge(id),
        (None, Some(id), _) => Principal::back_office(id),
        (None, None, Some(name)) => Principal::analyst(name),
        (None, None, None) => bail!("give --fridge ID, --back-office ID or --analyst NAME"),
    };
    let Some(principal) = principal else {
        bail!(
            "{:?} is not an id ({})",
            args.fridge.or(args.back_office).or(args.analyst).unwrap_or_default(),
            coldstream_sources::auth::ID_RULE
        );
    };
    if !(1..=3650).contains(&args.valid_days) {
        bail!("--valid-days must be in 1..=3650");
    }
    let tokens = args.key.tokens()?;
    if args.legacy {
        println!("{}", tokens.issue_legacy(&principal));
    } else {
        println!("{}", tokens.issue_until(&principal, now_s() + args.valid_days * 86_400));
    }
    Ok(())
}
