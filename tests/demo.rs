//! `tollgate demo`, the README's main command, end to end: license server, agent, load,
//! and the exact-count check it prints.

#[test]
fn demo_runs_the_whole_system_and_counts_exactly() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "demo",
            "--duration",
            "3",
            "--cps",
            "40",
            "--registrations",
            "200",
            "--plain",
        ])
        .output()
        .expect("run tollgate demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Every agent's counts match"), "{stdout}");
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
}
