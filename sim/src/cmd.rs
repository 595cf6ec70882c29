//! Running external commands (mostly iproute2's `ip`) with errors that name the
//! command line and carry its stderr.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::error::{Result, SimError};

/// The command line as a human would type it, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (stdin closed) and returns its output; non-zero exit is an error.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    run_with_input(cmd, None)
}

/// Runs `cmd` feeding `input` on stdin; non-zero exit is an error.
pub(crate) fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Result<Output> {
    let command = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| SimError::Command {
        command: command.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error shows up as the command's own failure below.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| SimError::Command {
        command: command.clone(),
        status: "wait failed".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(input) = input {
            stderr.push_str("\n-- batch input --\n");
            stderr.push_str(input);
        }
        return Err(SimError::Command {
            command,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(out)
}

/// `ip [-n NETNS] -batch -` with the given lines. Does nothing for no lines.
pub(crate) fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    let mut input = lines.join("\n");
    input.push('\n');
    run_with_input(&mut cmd, Some(&input)).map(drop)
}

/// `ip <args>` returning stdout.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let out = run(Command::new("ip").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
