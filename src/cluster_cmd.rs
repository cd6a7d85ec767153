//! `tollgate cluster ca` and `tollgate cluster issue`: the certificate authority of the
//! agents' mesh and its node certificates (see docs/cluster.md). The work is in
//! `tollgate_mesh::certs`; this module parses the arguments, prints what was written and
//! maps errors to exit codes.

use std::io;
use std::path::PathBuf;

use tollgate_mesh::certs::{self, CertError, ClusterCa};

use crate::Failure;

/// The cluster CA and node certificates: agents peer over QUIC with mutual TLS, and accept
/// only peers whose certificate the cluster CA signed.
#[derive(Debug, clap::Args)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Create the cluster CA: DIR/ca.pem, the certificate every node trusts, and DIR/ca.key
    /// (mode 0600), the key that signs node certificates; keep it off the nodes. Refuses to
    /// overwrite existing files.
    Ca(CaArgs),
    /// Issue a node certificate signed by the cluster CA: DIR/NAME.pem and DIR/NAME.key
    /// (mode 0600). NAME is the node id, written as the certificate's DNS name; the node's
    /// agent runs under the same node id. Refuses to overwrite existing files.
    Issue(IssueArgs),
}

#[derive(Debug, clap::Args)]
struct CaArgs {
    /// Directory to write ca.pem and ca.key into (created, mode 0700, if missing).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// The CA's name, as its certificate's common name.
    #[arg(long, default_value = certs::CA_NAME_DEFAULT)]
    name: String,
    /// How long the CA is valid, in days.
    #[arg(long, default_value_t = certs::CA_DAYS_DEFAULT)]
    days: u32,
}

#[derive(Debug, clap::Args)]
struct IssueArgs {
    /// Directory holding the CA's ca.pem and ca.key (as `tollgate cluster ca` wrote them).
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
    /// The node id: 1 to 64 characters of letters, digits, '-', '_' and '.', a DNS name (no
    /// IP address), e.g. `sip-fra-1`. Unique in the cluster.
    #[arg(long, value_name = "NAME")]
    node: String,
    /// Directory to write NAME.pem and NAME.key into (created, mode 0700, if missing).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// How long the certificate is valid, in days.
    #[arg(long, default_value_t = certs::NODE_DAYS_DEFAULT)]
    days: u32,
}

pub(crate) fn run(args: ClusterArgs) -> Result<(), Failure> {
    match args.command {
        ClusterCommand::Ca(args) => ca(args),
        ClusterCommand::Issue(args) => issue(args),
    }
}

fn ca(args: CaArgs) -> Result<(), Failure> {
    let ca = ClusterCa::generate_valid_for(&args.name, args.days).map_err(failure)?;
    let [cert, key] = ca.save(&args.out_dir).map_err(failure)?;
    println!(
        "wrote {} (the CA certificate: copy it to every node)",
        cert.display()
    );
    println!(
        "wrote {} (the CA key, mode 0600: keep it safe, not on the nodes)",
        key.display()
    );
    println!(
        "next, for each node: tollgate cluster issue --ca-dir {} --node NAME --out-dir DIR",
        args.out_dir.display()
    );
    Ok(())
}

fn issue(args: IssueArgs) -> Result<(), Failure> {
    let ca = ClusterCa::load(&args.ca_dir).map_err(failure)?;
    let node = ca.issue_valid_for(&args.node, args.days).map_err(failure)?;
    let [cert, key] = node.save(&args.out_dir).map_err(failure)?;
    println!(
        "wrote {} (node {}: certificate, signed by the cluster CA)",
        cert.display(),
        node.node_id
    );
    println!("wrote {} (its key, mode 0600)", key.display());
    println!(
        "on node {} (copy the files there): [mesh] ca = {:?}, cert = {:?}, key = {:?}",
        node.node_id,
        args.ca_dir.join(certs::CA_CERT_FILE).display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    Ok(())
}

/// Bad arguments, missing or existing files are usage errors (exit 2); the rest (a disk
/// that fails, the generator) is a runtime failure (exit 1).
fn failure(error: CertError) -> Failure {
    let usage = match &error {
        CertError::Io { error, .. } => matches!(
            error.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
        ),
        CertError::Generate(_) => false,
        _ => true,
    };
    if usage {
        Failure::Config(error.into())
    } else {
        Failure::Runtime(error.into())
    }
}
