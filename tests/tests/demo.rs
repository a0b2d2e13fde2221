//! `portcullis demo`, the README's first command: started as a user would start it, every
//! command it prints is run with the real `curl` (through `bash`, as pasted), and each
//! answers what the comment above it promises.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use portcullis_tests::host::binary;
use portcullis_tests::net::free_port;

/// The demo process, interrupted (Ctrl-C) when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// One printed suggestion: its comment lines and its command.
#[derive(Debug)]
struct Suggestion {
    comment: String,
    command: String,
}

fn run(command: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", command])
        .output()
        .expect("bash");
    assert!(out.status.success(), "{command}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_demo_starts_and_every_command_it_prints_answers_as_its_comment_says() {
    let (listen, admin) = (free_port(), free_port());
    // The demo's issuer and backends listen on fixed ports (9000, 9101, 9201): a demo left
    // running elsewhere makes this one exit, which the log below then says.
    let log = std::env::temp_dir().join(format!("portcullis-demo-{}.log", std::process::id()));
    let mut child = Command::new(binary())
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo(child);
    // The suggestions end with "Ctrl-C stops everything."; audit lines follow later.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line.starts_with("Ctrl-C stops everything");
            if tx.send(line).is_err() || done {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| {
                panic!(
                    "the demo printed no suggestions ({e}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        if line.starts_with("Ctrl-C stops everything") {
            break;
        }
        lines.push(line);
    }
    let mut suggestions = Vec::new();
    let mut comment = String::new();
    for line in &lines {
        if let Some(c) = line.strip_prefix("# ") {
            comment.push_str(c);
            comment.push('\n');
        } else if line.starts_with("curl ") || line.starts_with("for ") {
            suggestions.push(Suggestion {
                comment: std::mem::take(&mut comment),
                command: line.clone(),
            });
        }
    }
    let commands: Vec<&str> = suggestions.iter().map(|s| s.command.as_str()).collect();
    assert_eq!(suggestions.len(), 8, "{commands:#?}");
    assert!(
        commands
            .iter()
            .all(|c| c.contains(&format!("127.0.0.1:{listen}"))
                || c.contains(&format!("127.0.0.1:{admin}"))),
        "the commands use the chosen addresses: {commands:#?}"
    );

    let out: Vec<String> = suggestions.iter().map(|s| run(&s.command)).collect();
    let json = |i: usize| -> serde_json::Value {
        serde_json::from_str(&out[i]).unwrap_or_else(|e| panic!("{}: {e}: {}", commands[i], out[i]))
    };
    let says = |i: usize, what: &str| {
        assert!(
            suggestions[i].comment.contains(what),
            "suggestion {i} is about {what:?}: {suggestions:#?}"
        );
    };
    let status_line = |i: usize| out[i].lines().next().unwrap_or_default().to_owned();

    says(0, "EU resident");
    assert_eq!(json(0)["backend"], "eu");
    assert_eq!(json(0)["headers"]["x-user-id"], "alice");
    says(1, "US resident");
    assert_eq!(json(1)["backend"], "us");
    says(2, "no token: 401");
    assert!(status_line(2).contains(" 401"), "{}", out[2]);
    assert!(
        out[2]
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    says(3, "403 insufficient_scope");
    assert!(status_line(3).contains(" 403"), "{}", out[3]);
    assert!(out[3].contains("insufficient_scope"));
    says(4, "spoofed x-user-id is stripped");
    assert_eq!(json(4)["headers"]["x-user-id"], "alice");
    says(5, "challenge (403)");
    assert!(status_line(5).contains(" 403"), "{}", out[5]);
    assert!(out[5].contains("challenge_required"), "{}", out[5]);
    says(6, "200s turn into 429s");
    let codes: Vec<&str> = out[6].split_whitespace().collect();
    assert_eq!(codes.first(), Some(&"200"), "{codes:?}");
    assert_eq!(codes.last(), Some(&"429"), "{codes:?}");
    says(7, "metrics");
    assert!(out[7].contains("portcullis_requests_total"), "{}", out[7]);
    drop(demo);
}
