//! `coldstream token`: the bearer token of a fridge or back-office client.

use anyhow::bail;
use coldstream_sources::auth::{Principal, Tokens};

use super::secret;

/// Whose token.
#[derive(clap::Args)]
pub struct Args {
    /// A fridge id.
    #[arg(long, conflicts_with = "back_office", required_unless_present = "back_office")]
    pub fridge: Option<String>,
    /// A back-office client id.
    #[arg(long)]
    pub back_office: Option<String>,
    /// The fleet secret (or COLDSTREAM_SECRET).
    #[arg(long)]
    pub secret: Option<String>,
}

/// Prints the token.
pub fn run(args: Args) -> anyhow::Result<()> {
    let principal = match (args.fridge, args.back_office) {
        (Some(id), _) => Principal::Fridge(id),
        (None, Some(id)) => Principal::BackOffice(id),
        (None, None) => bail!("give --fridge ID or --back-office ID"),
    };
    println!("{}", Tokens::new(secret(args.secret)).issue(&principal));
    Ok(())
}
