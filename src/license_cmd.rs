//! `tollgate license keygen / sign / verify / show`: the vendor's key and document tools.
//! (Being written.)

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct LicenseArgs {
    #[command(subcommand)]
    command: LicenseCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LicenseCommand {
    /// Create an Ed25519 signing key pair.
    Keygen,
}

pub fn run(args: LicenseArgs) -> Result<(), Failure> {
    match args.command {
        LicenseCommand::Keygen => Err(Failure::Runtime(anyhow::anyhow!("not yet"))),
    }
}
