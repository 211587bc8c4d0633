//! Nothing a user made is lost: a used run folder is refused untouched, `--quiet` keeps the
//! loader's warnings, SIGINT / SIGTERM stop at a checkpoint that `--resume` continues to the
//! uninterrupted run's bytes, and a stopped predict or export leaves no output behind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{ExitStatus, Stdio};

use crate::common::*;
use tracknet_train::TrainError;
use tracknet_train::stop::{SIGINT, StopFlag};

/// Every file under `dir` by relative path, with its bytes.
fn tree_bytes(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn state_json(run: &Path) -> serde_json::Value {
    let dir = read_pointer(&run.join("checkpoints"), "last").expect("a last checkpoint");
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap()
}

fn resume(run: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_tracknet"))
        .args(["train", "--quiet", "--resume"])
        .arg(run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Trains the reference config into `run` from the CLI with its progress lines on, sends
/// `signals` (`kill -SIG`, one right after the other) once a line contains `trigger`, and
/// returns the exit status and the log.
fn train_and_signal(run: &Path, trigger: &str, signals: &[&str]) -> (ExitStatus, String) {
    run_and_signal(train_command(&reference().cfg, run), &[trigger], signals)
}

/// Runs `cmd`, sends `signals` once its stderr has shown a line with each of `marks`, in that
/// order, and returns the exit status and the log.
fn run_and_signal(mut cmd: Command, marks: &[&str], signals: &[&str]) -> (ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (mut log, mut seen) = (String::new(), 0);
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if seen < marks.len() && line.contains(marks[seen]) {
            seen += 1;
            if seen == marks.len() {
                let kill: Vec<String> =
                    signals.iter().map(|s| format!("kill -{s} {pid}")).collect();
                let status = Command::new("sh")
                    .args(["-c", &kill.join("; ")])
                    .status()
                    .unwrap();
                assert!(status.success(), "kill failed");
            }
        }
        log.push_str(&line);
        log.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(
        seen == marks.len(),
        "no line `{}`:\n{log}",
        marks[seen.min(marks.len() - 1)]
    );
    (status, log)
}

#[test]
fn a_used_run_folder_is_refused_and_left_byte_for_byte() {
    let reference = reference();
    let finished = reference.root.join("uninterrupted");
    let before = tree_bytes(&finished);
    assert!(before.keys().any(|p| p.ends_with("metrics.csv")));
    let out = train_command(&reference.cfg, &finished)
        .arg("--quiet")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a finished run was trained over");
    assert!(
        err.contains(&finished.display().to_string()) && err.contains("--resume"),
        "the error names the folder and --resume: {err}"
    );
    assert!(tree_bytes(&finished) == before, "the finished run changed");
    // The library refuses it too.
    let cfg = RunConfig::load_combined(&reference.cfg, &[]).unwrap();
    let e = train::<AD>(&cfg, &opts(finished.clone()), &Default::default()).unwrap_err();
    assert!(matches!(e, TrainError::RunFolderInUse { .. }), "{e}");
    assert!(tree_bytes(&finished) == before, "the finished run changed");
}

#[test]
fn quiet_keeps_the_scan_warnings_and_strict_mode_says_that_it_stops() {
    let root = tmp("quiet-skip");
    let cfg = tiny(
        &root,
        1,
        &["training.steps_per_epoch=1", "training.val_steps=1"],
    );
    let cfg_path = on_disk(&root, &cfg);
    // A row whose frame is not on disk, as the file's last line.
    let csv = root.join("data/game1/Clip1/Label.csv");
    let mut text = std::fs::read_to_string(&csv).unwrap();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let line = text.lines().count() + 1;
    text.push_str("9999.jpg,1,10,10,0\n");
    std::fs::write(&csv, text).unwrap();
    let at = format!("Label.csv:{line}");

    let out = train_command(&cfg_path, &root.join("run"))
        .arg("--quiet")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&at) && err.contains("9999.jpg") && err.contains("row skipped"),
        "--quiet keeps the skipped row's warning: {err}"
    );

    let out = train_command(&cfg_path, &root.join("strict"))
        .args(["--quiet", "data.strict=true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&at) && err.contains("loading stops here") && !err.contains("skipped"),
        "strict mode says that the run stops: {err}"
    );
}

#[test]
fn sigint_or_sigterm_mid_epoch_stops_at_a_checkpoint_and_resume_ends_as_the_uninterrupted_run() {
    let _serial = serial();
    let reference = reference();
    // SIGINT sent in epoch 2 (of 3), SIGTERM in epoch 1 (before any checkpoint): 4 steps an
    // epoch. The run stops at the first step it starts after the signal (on a loaded machine
    // that may be a later one).
    for (signal, trigger, sent_in, code) in [
        ("INT", "epoch 2/3 step 1/4", 2, 130),
        ("TERM", "epoch 1/3 step 2/4", 1, 143),
    ] {
        let run = reference.root.join(format!("sig{signal}"));
        let (status, log) = train_and_signal(&run, trigger, &[signal]);
        assert_eq!(status.code(), Some(code), "SIG{signal}:\n{log}");
        // Written at the step it stopped at: the epochs before complete, this one part-way.
        let state = state_json(&run);
        let partial = &state["partial_epoch"];
        let epoch = partial["epoch"].as_u64().unwrap();
        assert!(epoch >= sent_in, "stopped before the signal: {state}");
        assert_eq!(state["epoch"], epoch - 1, "{state}");
        let step = partial["steps"].as_u64().unwrap();
        assert!(step < 4, "stopped before the epoch's end: {partial}");
        let said = format!(
            "stopped at epoch {epoch}, step {step}; continue with `--resume {}`",
            run.display()
        );
        assert!(log.contains(&said), "`{said}` in:\n{log}");
        resume(&run);
        assert_same_as_reference(&run, &format!("after SIG{signal} + --resume"));
    }
}

#[test]
fn a_second_signal_exits_at_once_and_the_last_checkpoint_carries_the_run() {
    let _serial = serial();
    let reference = reference();
    let run = reference.root.join("twice");
    let (status, log) = train_and_signal(&run, "epoch 2/3 step 1/4", &["TERM", "INT"]);
    // 128 + the second signal's number; which one the process takes second is the kernel's
    // choice when both are pending at once (the lower number is delivered first).
    assert!(
        matches!(status.code(), Some(130 | 143)),
        "a signal's status, not {status}:\n{log}"
    );
    assert!(!log.contains("stopped at"), "no graceful stop:\n{log}");
    // The last epoch-end checkpoint (epoch 1's, or a later one's on a loaded machine), as the
    // atomic writes left it.
    let state = state_json(&run);
    assert!(state["epoch"].as_u64().unwrap() >= 1, "{state}");
    assert!(state.get("partial_epoch").is_none(), "{state}");
    resume(&run);
    assert_same_as_reference(&run, "after two signals + --resume");
}

#[test]
fn a_stopped_predict_or_export_leaves_no_output() {
    let reference = reference();
    let run = reference.root.join("uninterrupted");
    let stop = StopFlag::new();
    stop.request(SIGINT);
    let cfg = run_config(&run, &[]).unwrap();
    let ckpt = checkpoint_dir(&run, "last").unwrap();
    let device = Default::default();
    let model = load_run_model::<B>(&cfg, &ckpt, &device).unwrap();
    let root = tmp("stopped-outputs");
    let pred = root.join("pred");
    let clip = reference.root.join("data/game3/Clip1");
    let e = predict(&model, &cfg, &clip, &pred, 0.5, &device, Some(&stop)).unwrap_err();
    assert!(
        matches!(e, TrainError::Interrupted { .. }) && e.to_string().contains("SIGINT"),
        "{e}"
    );
    let exp = root.join("export");
    let e = tracknet_train::export::export_run(&run, "last", &exp, Some(&stop)).unwrap_err();
    assert!(matches!(e, TrainError::Interrupted { .. }), "{e}");
    let left: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert!(
        left.is_empty(),
        "nothing, not even a staging folder: {left:?}"
    );
    // Without a stop both write their folders whole.
    predict(&model, &cfg, &clip, &pred, 0.5, &device, None).unwrap();
    assert!(pred.join("predictions.csv").is_file());
}

#[test]
fn a_quickstart_stopped_in_its_second_stage_resumes_from_its_root() {
    let _serial = serial();
    let root = tmp("quickstart-stop");
    // The embedded two-stage default, shrunk: 6 games of one 4-frame clip, a one-layer
    // backbone, one epoch of eight steps per stage. Its data goes under the working folder.
    let shrink = [
        "data.synthetic.clips=1",
        "data.synthetic.frames=4",
        "data.synthetic.size=[96,54]",
        "data.preprocess.resize=[64,32]",
        "model.heatmap.size=[32,16]",
        "model.backbone.hidden_size=32",
        "model.backbone.num_hidden_layers=1",
        "model.backbone.num_attention_heads=2",
        "model.backbone.intermediate_size=64",
        "model.decoder.channels=[32,16,8]",
        "training.epochs=1",
        "training.steps_per_epoch=8",
        "training.log_every=1",
        "training.batch_size=2",
        "training.preview_frames=0",
    ];
    let quickstart = |run: &str, resume: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tracknet"));
        c.current_dir(&root).arg("train");
        if resume {
            c.args(["--resume", run]);
        } else {
            c.args(["--run-dir", run]).args(shrink);
        }
        c
    };
    let out = quickstart("whole", false).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains("after stage 2"), "{table}");

    let (status, log) = run_and_signal(
        quickstart("stopped", false),
        &["quick-start stage 2/2", "epoch 1/1 step 1/8"],
        &["INT"],
    );
    assert_eq!(status.code(), Some(130), "{log}");
    let said =
        |step: usize| format!("stopped at epoch 1, step {step}; continue with `--resume stopped`");
    assert!(
        (1..8).any(|step| log.contains(&said(step))),
        "stopped mid-epoch, and the line names the quick-start's folder:\n{log}"
    );
    let out = quickstart("stopped", true).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("1-pretrain: finished, kept"), "{log}");
    // The same closing table (stage 2's start read back from its checkpoint) and stage 2.
    assert_eq!(String::from_utf8_lossy(&out.stdout), table);
    let (a, b) = (
        run_fingerprint(&root.join("whole/2-qlora")),
        run_fingerprint(&root.join("stopped/2-qlora")),
    );
    assert_eq!(a.0, b.0, "stage 2's metrics.csv");
    assert!(a.1 == b.1, "stage 2's last checkpoint");
}
