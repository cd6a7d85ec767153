//! Stand-ins for the commands a build without some cargo features lacks
//! (`cargo build --release --no-default-features` is the node's agent and CLI only). Each
//! accepts any arguments and says plainly what the binary lacks and how to get it (exit 2),
//! instead of clap's "unrecognized subcommand".

use crate::Failure;

/// Whatever follows the missing command; read only to be refused.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

/// The refusal for `tollgate <command>` in a build without `feature`.
pub(crate) fn refuse(_args: Args, command: &str, feature: &str, what: &str) -> Failure {
    Failure::Usage(anyhow::anyhow!(
        "`tollgate {command}` is not in this binary: it was built without the `{feature}` \
         cargo feature ({what}); use a full build (`cargo build --release`, or \
         `--features {feature}`), or the package that ships it"
    ))
}
