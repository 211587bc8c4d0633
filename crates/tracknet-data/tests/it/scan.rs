//! Dataset scanning and loading on synthetic and hand-made broken sets.
use crate::common;

use std::sync::Arc;

use common::{TempDir, write_jpeg};
use tracknet_data::{
    BatchLoader, DataError, DatasetIndex, IssueKind, LoaderOptions, SynthOptions, generate,
};

fn games(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn tiny_synth(dir: &TempDir) -> std::path::PathBuf {
    let root = dir.path().join("synth");
    let opts = SynthOptions {
        games: 2,
        clips: 1,
        frames: 6,
        size: (128, 72),
        seed: 3,
        ..Default::default()
    };
    let s = generate(&root, &opts).unwrap();
    assert_eq!((s.games, s.clips, s.frames), (2, 2, 12));
    root
}

#[test]
fn synthetic_set_scans_clean() {
    let dir = TempDir::new("scan-synth");
    let root = tiny_synth(&dir);
    let (index, report) = DatasetIndex::scan(&root, &games(&["game1", "game2"]), true).unwrap();
    assert_eq!(index.len(), 12);
    assert_eq!(
        (report.games, report.clips, report.rows, report.frames),
        (2, 2, 12, 12)
    );
    assert!(report.skipped.is_empty());
    assert_eq!(index.frames[0].game, "game1");
    assert_eq!(index.frames[6].game, "game2");
    assert_eq!(index.frames[0].frame_name, "0000.jpg");
    assert!(index.frames.iter().all(|f| f.image_size == Some((128, 72))));
    for f in &index.frames {
        match f.xy {
            Some((x, y)) => {
                assert!(f.visibility > 0);
                assert!((0.0..128.0).contains(&x) && (0.0..72.0).contains(&y));
            }
            None => assert_eq!(f.visibility, 0),
        }
    }
    // Selecting one game only.
    let (one, _) = DatasetIndex::scan(&root, &games(&["game2"]), false).unwrap();
    assert_eq!(one.len(), 6);
    assert!(one.frames.iter().all(|f| f.game == "game2"));
}

#[test]
fn missing_game_is_an_error() {
    let dir = TempDir::new("scan-nogame");
    let root = tiny_synth(&dir);
    let err = DatasetIndex::scan(&root, &games(&["game9"]), false).unwrap_err();
    assert!(matches!(err, DataError::GameNotFound { .. }));
    assert!(err.to_string().contains("game9"), "{err}");
}

/// game1/Clip1 with one problem per row, game1/Clip2 without Label.csv.
fn broken_set(dir: &TempDir) -> std::path::PathBuf {
    let root = dir.path().join("broken");
    let clip = root.join("game1").join("Clip1");
    std::fs::create_dir_all(&clip).unwrap();
    for name in ["0000.jpg", "0001.jpg", "0002.jpg", "0004.jpg"] {
        write_jpeg(&clip.join(name), 64, 36);
    }
    std::fs::write(
        clip.join("0003.jpg"),
        b"\xFF\xD8\xFF\xE0 this is not a jpeg",
    )
    .unwrap();
    let csv = "file name,visibility,x-coordinate,y-coordinate,status\n\
               0000.jpg,1,10,20,0\n\
               0001.jpg,1,,,0\n\
               0002.jpg,1,abc,5,0\n\
               0000.jpg,1,11,21,0\n\
               0009.jpg,0,,,\n\
               0003.jpg,0,,,\n\
               0004.jpg,2,30,12,2\n";
    std::fs::write(clip.join("Label.csv"), csv).unwrap();
    std::fs::create_dir_all(root.join("game1").join("Clip2")).unwrap();
    write_jpeg(&root.join("game1").join("Clip2").join("0000.jpg"), 64, 36);
    root
}

#[test]
fn broken_rows_are_skipped_with_file_and_line() {
    let dir = TempDir::new("scan-broken");
    let root = broken_set(&dir);
    let (index, report) = DatasetIndex::scan(&root, &games(&["game1"]), false).unwrap();
    let names: Vec<&str> = index.frames.iter().map(|f| f.frame_name.as_str()).collect();
    assert_eq!(names, vec!["0000.jpg", "0003.jpg", "0004.jpg"]);
    assert_eq!(index.frames[0].xy, Some((10.0, 20.0)));
    assert_eq!(index.frames[2].status, Some(2));
    assert_eq!(report.clips, 2);
    assert_eq!(report.rows, 7);
    assert_eq!(report.visible, 2);
    for kind in [
        IssueKind::BlankCoordinates,
        IssueKind::BadRow,
        IssueKind::DuplicateRow,
        IssueKind::MissingFrame,
        IssueKind::MissingLabel,
    ] {
        assert_eq!(report.count(kind), 1, "{kind:?}\n{report}");
    }
    let msgs: Vec<String> = report.skipped.iter().map(|i| i.to_string()).collect();
    let csv = root.join("game1/Clip1/Label.csv").display().to_string();
    assert!(
        msgs[0].starts_with(&format!("{csv}:3:")) && msgs[0].contains("blank"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[1].starts_with(&format!("{csv}:4:")) && msgs[1].contains("`abc`"),
        "{}",
        msgs[1]
    );
    assert!(
        msgs[2].starts_with(&format!("{csv}:5:")) && msgs[2].contains("line 2"),
        "{}",
        msgs[2]
    );
    assert!(
        msgs[3].starts_with(&format!("{csv}:6:")) && msgs[3].contains("0009.jpg"),
        "{}",
        msgs[3]
    );
    assert!(
        msgs[4].contains("Clip2/Label.csv") && msgs[4].contains("no Label.csv"),
        "{}",
        msgs[4]
    );
    let summary = report.to_string();
    assert!(
        summary.contains("kept 3 frames (2 visible), skipped 5 issues"),
        "{summary}"
    );
    assert!(summary.contains("1 x duplicate row"), "{summary}");
}

#[test]
fn strict_scan_fails_on_first_problem() {
    let dir = TempDir::new("scan-strict");
    let root = broken_set(&dir);
    let err = DatasetIndex::scan(&root, &games(&["game1"]), true).unwrap_err();
    let DataError::Dataset(issue) = &err else {
        panic!("expected a dataset error, got {err}");
    };
    assert_eq!(issue.kind, IssueKind::BlankCoordinates);
    assert_eq!(issue.line, Some(3));
    assert!(err.to_string().contains("Label.csv:3:"), "{err}");
    // The same row: skipped without `strict`, and said so; with it the scan stops, and the
    // message says that instead.
    let (_, report) = DatasetIndex::scan(&root, &games(&["game1"]), false).unwrap();
    let skipped = report.skipped.iter().find(|i| i.line == Some(3)).unwrap();
    assert!(skipped.message.ends_with("row skipped"), "{skipped}");
    let msg = err.to_string();
    assert!(
        !msg.contains("skipped")
            && msg.contains("loading stops here")
            && msg.contains("data.strict"),
        "{msg}"
    );
}

#[test]
fn a_loader_started_part_way_yields_the_rest_of_the_epoch() {
    let dir = TempDir::new("load-resume");
    let root = broken_set(&dir);
    let (index, _) = DatasetIndex::scan(&root, &games(&["game1"]), false).unwrap();
    let index = Arc::new(index);
    let opts = LoaderOptions {
        batch_size: 1,
        shuffle: true,
        seed: 5,
        epoch: 2,
        flip_prob: 0.5,
        ..loader_opts(false)
    };
    let names = |batches: Vec<tracknet_data::Batch>| -> Vec<(usize, Vec<f32>)> {
        batches
            .into_iter()
            .map(|b| (b.meta[0].index, b.images))
            .collect()
    };
    let mut whole = BatchLoader::new(index.clone(), opts.clone()).unwrap();
    let first: Vec<_> = whole.by_ref().take(1).map(Result::unwrap).collect();
    let at = whole.position();
    let rest: Vec<_> = whole.map(Result::unwrap).collect();
    assert!(!rest.is_empty() && at >= 1);
    let again: Vec<_> = BatchLoader::starting_at(index, opts, at)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(names(again), names(rest));
    assert_eq!(first.len(), 1);
}

#[test]
fn bad_header_skips_clip() {
    let dir = TempDir::new("scan-header");
    let clip = dir.path().join("game1/Clip1");
    std::fs::create_dir_all(&clip).unwrap();
    write_jpeg(&clip.join("0000.jpg"), 8, 8);
    std::fs::write(clip.join("Label.csv"), "name,vis,x,y\n0000.jpg,1,1,1,0\n").unwrap();
    let (index, report) = DatasetIndex::scan(dir.path(), &games(&["game1"]), false).unwrap();
    assert!(index.is_empty());
    assert_eq!(report.count(IssueKind::BadHeader), 1);
    assert_eq!(report.skipped[0].line, Some(1));
}

fn loader_opts(strict: bool) -> LoaderOptions {
    LoaderOptions {
        batch_size: 2,
        shuffle: false,
        num_workers: 2,
        resize: [32, 18],
        heatmap_size: [32, 18],
        normalize: false,
        strict,
        ..Default::default()
    }
}

#[test]
fn corrupt_jpeg_is_skipped_at_load_time_or_fails_when_strict() {
    let dir = TempDir::new("load-corrupt");
    let root = broken_set(&dir);
    let (index, _) = DatasetIndex::scan(&root, &games(&["game1"]), false).unwrap();
    let index = Arc::new(index);
    let mut loader = BatchLoader::new(index.clone(), loader_opts(false)).unwrap();
    let batches: Vec<_> = loader.by_ref().map(Result::unwrap).collect();
    // Batch 0 = [0000, 0003 (corrupt)] -> 1 sample; batch 1 = [0004].
    assert_eq!(
        batches.iter().map(|b| b.batch_size).collect::<Vec<_>>(),
        vec![1, 1]
    );
    assert_eq!(batches[0].images.len(), 3 * 32 * 18);
    assert_eq!(batches[0].meta[0].index, 0);
    let report = loader.report();
    assert_eq!(report.loaded, 2);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].kind, IssueKind::Decode);
    assert!(
        report.skipped[0].to_string().contains("0003.jpg"),
        "{}",
        report.skipped[0]
    );
    assert!(report.to_string().contains("skipped 1 undecodable"));

    let results: Vec<_> = BatchLoader::new(index, loader_opts(true))
        .unwrap()
        .collect();
    assert_eq!(results.len(), 1, "the loader stops after the error");
    let err = results.into_iter().next().unwrap().unwrap_err();
    assert!(err.to_string().contains("0003.jpg"), "{err}");
}

#[test]
fn utf16_label_csv_is_decoded_and_undecodable_text_skips_only_its_row() {
    let dir = TempDir::new("scan-encoding");
    let csv = "file name,visibility,x-coordinate,y-coordinate,status\r\n0000.jpg,1,3,4,0\r\n";
    let utf16le: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(csv.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let utf16be: Vec<u8> = [0xFE, 0xFF]
        .into_iter()
        .chain(csv.encode_utf16().flat_map(u16::to_be_bytes))
        .collect();
    let utf8bom: Vec<u8> = [0xEF, 0xBB, 0xBF].into_iter().chain(csv.bytes()).collect();
    // A lone 0xE9 (Latin-1 "é") is not UTF-8.
    let mut broken = csv.as_bytes().to_vec();
    broken.insert(60, 0xE9);
    for (clip, bytes) in [
        ("Clip1", utf16le),
        ("Clip2", utf16be),
        ("Clip3", utf8bom),
        ("Clip4", broken),
    ] {
        let dir = dir.path().join("game1").join(clip);
        std::fs::create_dir_all(&dir).unwrap();
        write_jpeg(&dir.join("0000.jpg"), 8, 8);
        std::fs::write(dir.join("Label.csv"), bytes).unwrap();
    }
    let (index, report) = DatasetIndex::scan(dir.path(), &games(&["game1"]), false).unwrap();
    // The three readable encodings give the same row; the fourth clip's row is reported, not
    // fatal.
    assert_eq!(index.len(), 3, "{report}");
    assert!(index.frames.iter().all(|f| f.xy == Some((3.0, 4.0))));
    assert_eq!(report.count(IssueKind::BadEncoding), 1, "{report}");
    let issue = &report.skipped[0];
    assert!(issue.file.ends_with("game1/Clip4/Label.csv"), "{issue}");
    assert!(issue.message.contains("offset 60"), "{issue}");
    assert_eq!(issue.line, Some(2), "{issue}");
    assert!(issue.message.contains("`file name`"), "{issue}");
    // Strict: the same clip is an error naming the file.
    let err = DatasetIndex::scan(dir.path(), &games(&["game1"]), true).unwrap_err();
    assert!(err.to_string().contains("Clip4/Label.csv"), "{err}");
}

#[test]
fn quoted_fields_crlf_and_a_bad_byte_cost_only_their_row() {
    let dir = TempDir::new("scan-quoting");
    let clip = dir.path().join("game1/Clip1");
    std::fs::create_dir_all(&clip).unwrap();
    for name in ["0000.jpg", "0001.jpg", "0002.jpg", "a,b.jpg"] {
        write_jpeg(&clip.join(name), 8, 8);
    }
    let mut csv = b"\"file name\",\"visibility\",\"x-coordinate\",\"y-coordinate\",\"status\"\r\n\
        \"0000.jpg\",1,\"3.5\",4,0\r\n\
        0001.jpg , 0 , , ,\r\n"
        .to_vec();
    csv.extend_from_slice(b"\"00\xE9.jpg\",1,1,1,0\r\n");
    csv.extend_from_slice(b"0002.jpg,1,5,6,2\r\n\"a,b.jpg\",2,7,8,1\r\n");
    std::fs::write(clip.join("Label.csv"), csv).unwrap();
    let (index, report) = DatasetIndex::scan(dir.path(), &games(&["game1"]), false).unwrap();
    let names: Vec<&str> = index.frames.iter().map(|f| f.frame_name.as_str()).collect();
    assert_eq!(
        names,
        ["0000.jpg", "0001.jpg", "0002.jpg", "a,b.jpg"],
        "{report}"
    );
    assert_eq!(index.frames[0].xy, Some((3.5, 4.0)));
    assert_eq!(index.frames[1].xy, None);
    assert_eq!(index.frames[3].xy, Some((7.0, 8.0)));
    assert_eq!(report.rows, 5);
    assert_eq!(report.skipped.len(), 1, "{report}");
    let issue = &report.skipped[0];
    assert_eq!(
        (issue.kind, issue.line),
        (IssueKind::BadEncoding, Some(4)),
        "{issue}"
    );
}
