//! Workers as separate OS processes (see [`crate::worker_process`]), so that a signal stops a
//! whole process: SIGKILL, SIGSTOP and SIGCONT, or a graceful stop by closing stdin.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use uuid::Uuid;

/// How to start a worker process: a program and the arguments before `<url> <name> <consumers>`.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The program: the `test-worker` binary, or a binary with a worker subcommand.
    pub program: PathBuf,
    /// Arguments before the worker's own (a subcommand).
    pub prefix: Vec<String>,
    /// Environment for the process (see [`crate::worker_process`]).
    pub env: Vec<(String, String)>,
}

impl WorkerCommand {
    /// `program` with no prefix and no environment.
    #[must_use]
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            prefix: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }
}

/// A worker process; SIGCONTed and killed when dropped.
#[derive(Debug)]
pub struct WorkerProcess {
    /// The process.
    pub child: Child,
    /// Its worker id.
    pub id: Uuid,
    /// Its worker name.
    pub name: String,
}

impl WorkerProcess {
    /// Starts a worker process with `consumers` recorders and waits until it registered.
    ///
    /// # Errors
    /// When it cannot start or does not print its id.
    pub fn spawn(
        command: &WorkerCommand,
        url: &str,
        name: &str,
        consumers: usize,
    ) -> anyhow::Result<Self> {
        let mut c = Command::new(&command.program);
        c.args(&command.prefix)
            .args([url, name, &consumers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in &command.env {
            c.env(k, v);
        }
        let mut child = c.spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped")).read_line(&mut line)?;
        let id = line
            .trim()
            .strip_prefix("worker ")
            .ok_or_else(|| anyhow::anyhow!("{name}: unexpected line {line:?}"))?
            .parse()?;
        Ok(Self {
            child,
            id,
            name: name.to_owned(),
        })
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`, ...).
    ///
    /// # Errors
    /// When `kill` fails.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.name);
        Ok(())
    }

    /// SIGKILL, and reap it.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Whether it still runs.
    ///
    /// # Errors
    /// When its state cannot be read.
    pub fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Graceful stop (stdin closes); the process must exit successfully.
    ///
    /// # Errors
    /// When it exits with a failure.
    pub fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "{} exited with {status}", self.name);
        Ok(())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.signal("CONT");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
