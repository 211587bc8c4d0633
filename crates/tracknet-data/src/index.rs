//! Scanning a TrackNet-layout dataset: `root/<game>/<clip>/NNNN.jpg` plus `Label.csv` per clip.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Issue, IssueKind};

/// Expected `Label.csv` header (compared case-insensitively, whitespace around fields ignored).
pub const LABEL_HEADER: [&str; 5] = [
    "file name",
    "visibility",
    "x-coordinate",
    "y-coordinate",
    "status",
];

/// One labelled frame.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FrameRecord {
    /// Image path on disk.
    pub path: PathBuf,
    /// Game folder name (e.g. `game1`).
    pub game: String,
    /// Clip folder name (e.g. `Clip3`).
    pub clip: String,
    /// File name as written in `Label.csv` (e.g. `0007.jpg`).
    pub frame_name: String,
    /// TrackNet visibility: 0 not in frame, 1 easy, 2 hard, 3 occluded but labelled.
    pub visibility: u8,
    /// Ball centre in original image pixels; `None` when visibility is 0.
    pub xy: Option<(f32, f32)>,
    /// TrackNet status (0 flying, 1 hit, 2 bounce) when present.
    pub status: Option<u8>,
    /// Image `(width, height)` read from the file header at scan time; `None` if unreadable
    /// (the frame is then reported when the loader fails to decode it).
    pub image_size: Option<(u32, u32)>,
}

/// All usable frames of the selected games, in a stable order (game list order, clips and
/// frames in natural order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetIndex {
    /// Dataset root the paths are under.
    pub root: PathBuf,
    /// Usable frames.
    pub frames: Vec<FrameRecord>,
}

/// What the scan found: counts plus every skipped item with file and line.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ScanReport {
    /// Games scanned.
    pub games: usize,
    /// Clip folders seen (including ones skipped for a missing label file).
    pub clips: usize,
    /// CSV data rows read.
    pub rows: usize,
    /// Frames kept in the index.
    pub frames: usize,
    /// Kept frames with visibility > 0.
    pub visible: usize,
    /// Problems found; in non-strict mode the affected rows / clips were skipped.
    pub skipped: Vec<Issue>,
}

impl ScanReport {
    /// Number of issues of one kind.
    pub fn count(&self, kind: IssueKind) -> usize {
        self.skipped.iter().filter(|i| i.kind == kind).count()
    }
}

impl fmt::Display for ScanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "scanned {} games, {} clips, {} rows: kept {} frames ({} visible), skipped {} issues",
            self.games,
            self.clips,
            self.rows,
            self.frames,
            self.visible,
            self.skipped.len()
        )?;
        let mut by_kind: BTreeMap<IssueKind, usize> = BTreeMap::new();
        for issue in &self.skipped {
            *by_kind.entry(issue.kind).or_default() += 1;
        }
        for (kind, n) in by_kind {
            writeln!(f, "  {n} x {}", kind.name())?;
        }
        for issue in self.skipped.iter().take(20) {
            writeln!(f, "  {issue}")?;
        }
        if self.skipped.len() > 20 {
            writeln!(f, "  ... and {} more", self.skipped.len() - 20)?;
        }
        Ok(())
    }
}

/// Sort key giving natural order: `Clip2` before `Clip10`, `0009.jpg` before `0010.jpg`.
pub(crate) fn natural_key(name: &str) -> (String, u64, String) {
    let stem = name.split('.').next().unwrap_or(name);
    let digits_start = stem
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_digit())
        .last()
        .map(|(i, _)| i)
        .unwrap_or(stem.len());
    let prefix = stem[..digits_start].to_string();
    let number = stem[digits_start..].parse::<u64>().unwrap_or(u64::MAX);
    (prefix, number, name.to_string())
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, "read directory", e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, "read directory", e))?;
        out.push(entry.path());
    }
    out.sort_by_key(|p| natural_key(&p.file_name().unwrap_or_default().to_string_lossy()));
    Ok(out)
}

/// Either record the issue (non-strict) or fail with it (strict).
fn report(issue: Issue, strict: bool, skipped: &mut Vec<Issue>) -> Result<(), DataError> {
    if strict {
        Err(DataError::Dataset(issue.stopping()))
    } else {
        skipped.push(issue);
        Ok(())
    }
}

impl DatasetIndex {
    /// Scans the games named in `games` under `root` (an empty list means every sub-folder
    /// whose name starts with `game`). A requested game that does not exist is always an
    /// error, since it is a configuration mistake rather than a data problem. Row problems are
    /// skipped and listed in the report, or returned as [`DataError::Dataset`] when `strict`.
    pub fn scan(
        root: &Path,
        games: &[String],
        strict: bool,
    ) -> Result<(DatasetIndex, ScanReport), DataError> {
        let game_dirs: Vec<(String, PathBuf)> = if games.is_empty() {
            read_dir_sorted(root)?
                .into_iter()
                .filter(|p| p.is_dir())
                .filter_map(|p| {
                    let name = p.file_name()?.to_string_lossy().to_string();
                    name.starts_with("game").then_some((name, p))
                })
                .collect()
        } else {
            let mut dirs = Vec::with_capacity(games.len());
            for game in games {
                let dir = root.join(game);
                if !dir.is_dir() {
                    return Err(DataError::GameNotFound {
                        root: root.to_path_buf(),
                        game: game.clone(),
                    });
                }
                dirs.push((game.clone(), dir));
            }
            dirs
        };

        let mut index = DatasetIndex {
            root: root.to_path_buf(),
            frames: Vec::new(),
        };
        let mut rep = ScanReport {
            games: game_dirs.len(),
            ..ScanReport::default()
        };
        for (game, game_dir) in &game_dirs {
            for clip_dir in read_dir_sorted(game_dir)? {
                if !clip_dir.is_dir() {
                    continue;
                }
                rep.clips += 1;
                let clip = clip_dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                scan_clip(game, &clip, &clip_dir, strict, &mut index, &mut rep)?;
            }
        }
        rep.frames = index.frames.len();
        rep.visible = index.frames.iter().filter(|f| f.visibility > 0).count();
        Ok((index, rep))
    }

    /// Reads one clip folder's `Label.csv` (not strict: bad rows are skipped and reported);
    /// the game is the parent folder's name. A folder without `Label.csv` gives an empty
    /// index and a `MissingLabel` issue.
    pub fn scan_clip(clip_dir: &Path) -> Result<(DatasetIndex, ScanReport), DataError> {
        let name = |p: Option<&Path>| {
            p.and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let (game, clip) = (name(clip_dir.parent()), name(Some(clip_dir)));
        let mut index = DatasetIndex {
            root: clip_dir.parent().unwrap_or(clip_dir).to_path_buf(),
            frames: Vec::new(),
        };
        let mut rep = ScanReport {
            clips: 1,
            ..ScanReport::default()
        };
        scan_clip(&game, &clip, clip_dir, false, &mut index, &mut rep)?;
        rep.frames = index.frames.len();
        rep.visible = index.frames.iter().filter(|f| f.visibility > 0).count();
        Ok((index, rep))
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when no frame was found.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frames of a `length`-frame sample ending at frame `i`, `stride` frames apart,
    /// oldest first (`i` itself last). Frames are counted within `i`'s clip in index order;
    /// steps before the clip's first frame repeat that frame, so a sample never crosses a clip.
    pub fn sequence(&self, i: usize, length: usize, stride: usize) -> Vec<usize> {
        let length = length.max(1);
        let Some(rec) = self.frames.get(i) else {
            return Vec::new();
        };
        let same_clip = |j: usize| {
            let f = &self.frames[j];
            f.clip == rec.clip && f.game == rec.game && f.path.parent() == rec.path.parent()
        };
        let mut start = i;
        while start > 0 && same_clip(start - 1) {
            start -= 1;
        }
        (0..length)
            .rev()
            .map(|k| i.saturating_sub(k * stride.max(1)).max(start))
            .collect()
    }
}

/// Parses one clip's `Label.csv` and appends its good rows to the index.
fn scan_clip(
    game: &str,
    clip: &str,
    clip_dir: &Path,
    strict: bool,
    index: &mut DatasetIndex,
    rep: &mut ScanReport,
) -> Result<(), DataError> {
    let csv = clip_dir.join("Label.csv");
    if !csv.is_file() {
        return report(
            Issue {
                file: csv,
                line: None,
                kind: IssueKind::MissingLabel,
                message: "clip has no Label.csv; clip skipped".into(),
            },
            strict,
            &mut rep.skipped,
        );
    }
    let bytes = std::fs::read(&csv).map_err(|e| DataError::io(&csv, "read", e))?;
    let text = match utf16_to_utf8(&bytes) {
        Ok(text) => text,
        Err(message) => {
            return report(
                Issue {
                    file: csv,
                    line: None,
                    kind: IssueKind::BadEncoding,
                    message: format!("{message}; clip skipped"),
                },
                strict,
                &mut rep.skipped,
            );
        }
    };
    // The csv crate handles quoting, CRLF and a UTF-8 byte-order mark; records are read as
    // bytes so that a byte that is not UTF-8 costs its row, not the clip. (Fields are trimmed
    // by us: the reader's own trimming drops the record's position, which issues report.)
    let raw: &[u8] = text.as_deref().unwrap_or(&bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(raw);
    let mut records = reader.byte_records();
    let header_ok = match records.next() {
        Some(Ok(h)) => {
            let fields: Vec<String> = h
                .iter()
                .map(|f| {
                    String::from_utf8_lossy(f)
                        .trim_start_matches('\u{feff}')
                        .trim()
                        .to_ascii_lowercase()
                })
                .collect();
            fields.len() >= 4 && fields.iter().zip(LABEL_HEADER).all(|(a, b)| a == b)
        }
        _ => false,
    };
    if !header_ok {
        return report(
            Issue {
                file: csv,
                line: Some(1),
                kind: IssueKind::BadHeader,
                message: format!("expected header `{}`; clip skipped", LABEL_HEADER.join(",")),
            },
            strict,
            &mut rep.skipped,
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut clip_frames = Vec::new();
    // Line feeds in `raw[..counted]`.
    let (mut counted, mut feeds) = (0usize, 0usize);
    for record in records {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                // Only I/O fails here (flexible reading accepts any field count), and the
                // bytes are already in memory: report it and stop reading this clip.
                let line = e
                    .position()
                    .map(|p| 1 + line_feeds(raw.get(..p.byte() as usize).unwrap_or_default()));
                return report(
                    Issue {
                        file: csv,
                        line,
                        kind: IssueKind::BadRow,
                        message: format!("unreadable CSV ({e}); rest of clip skipped"),
                    },
                    strict,
                    &mut rep.skipped,
                );
            }
        };
        // The reader's position is where it started reading, which can be before the `\n` of a
        // CRLF or before blank lines; the record starts at its first other byte.
        let mut start = record.position().map_or(0, |p| p.byte() as usize);
        while raw.get(start).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            start += 1;
        }
        // Counted from the bytes: the file's own line numbers, whatever the line endings
        // (incrementally, since records only move forward).
        feeds += line_feeds(raw.get(counted..start).unwrap_or_default());
        counted = counted.max(start);
        let line_no = 1 + feeds;
        if record.len() == 1 && record[0].trim_ascii().is_empty() {
            continue; // a line of spaces only
        }
        rep.rows += 1;
        let issue = |kind: IssueKind, message: String| Issue {
            file: csv.clone(),
            line: Some(line_no),
            kind,
            message,
        };
        let record = match csv::StringRecord::from_byte_record(record) {
            Ok(r) => r,
            Err(e) => {
                let field = LABEL_HEADER
                    .get(e.utf8_error().field())
                    .copied()
                    .unwrap_or("an extra field");
                // The first bad byte from this record's start is this record's.
                let at = raw
                    .get(start..)
                    .and_then(|rest| std::str::from_utf8(rest).err())
                    .map_or(start, |u| start + u.valid_up_to());
                let msg = format!(
                    "expected UTF-8 text (or UTF-16 with a byte-order mark), found an invalid \
                     byte at offset {at} (in `{field}`); row skipped"
                );
                report(issue(IssueKind::BadEncoding, msg), strict, &mut rep.skipped)?;
                continue;
            }
        };
        let row = match parse_row(&record) {
            Ok(row) => row,
            Err((kind, msg)) => {
                report(issue(kind, msg), strict, &mut rep.skipped)?;
                continue;
            }
        };
        if let Some(first) = seen.get(&row.name) {
            let msg = format!(
                "duplicate row for `{}` (first at line {first}); row skipped",
                row.name
            );
            report(
                issue(IssueKind::DuplicateRow, msg),
                strict,
                &mut rep.skipped,
            )?;
            continue;
        }
        seen.insert(row.name.clone(), line_no);
        let path = clip_dir.join(&row.name);
        if !path.is_file() {
            let msg = format!("frame `{}` listed but not on disk; row skipped", row.name);
            report(
                issue(IssueKind::MissingFrame, msg),
                strict,
                &mut rep.skipped,
            )?;
            continue;
        }
        let image_size = image::image_dimensions(&path).ok();
        clip_frames.push(FrameRecord {
            path,
            game: game.to_string(),
            clip: clip.to_string(),
            frame_name: row.name,
            visibility: row.visibility,
            xy: row.xy,
            status: row.status,
            image_size,
        });
    }
    clip_frames.sort_by_key(|f| natural_key(&f.frame_name));
    index.frames.extend(clip_frames);
    Ok(())
}

/// `Label.csv` bytes from UTF-16 LE/BE when they start with that byte-order mark (what
/// spreadsheet tools on Windows write as "Unicode text"), re-encoded as UTF-8; `None` when the
/// bytes are to be read as they are (UTF-8, checked per record by the caller).
fn utf16_to_utf8(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let utf16 = |big_endian: bool| {
        let units: Vec<u16> = bytes[2..]
            .chunks(2)
            .map(|c| match c {
                [a, b] if big_endian => u16::from_be_bytes([*a, *b]),
                [a, b] => u16::from_le_bytes([*a, *b]),
                _ => 0xFFFD,
            })
            .collect();
        let order = if big_endian { "BE" } else { "LE" };
        String::from_utf16(&units)
            .map(|s| Some(s.into_bytes()))
            .map_err(|_| {
                format!(
                    "expected UTF-16 {order} text after its byte-order mark, found invalid code units"
                )
            })
    };
    match bytes {
        [0xFF, 0xFE, ..] => utf16(false),
        [0xFE, 0xFF, ..] => utf16(true),
        _ => Ok(None),
    }
}

/// Number of line feeds in `bytes`.
fn line_feeds(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

struct Row {
    name: String,
    visibility: u8,
    xy: Option<(f32, f32)>,
    status: Option<u8>,
}

/// Parses `file name,visibility,x,y,status` (whitespace around fields ignored); blank x/y/status
/// allowed when visibility is 0.
fn parse_row(record: &csv::StringRecord) -> Result<Row, (IssueKind, String)> {
    let fields: Vec<&str> = record.iter().map(str::trim).collect();
    if fields.len() < 4 || fields.len() > 5 {
        return Err((
            IssueKind::BadRow,
            format!(
                "expected 5 fields (file name,visibility,x,y,status), found {}; row skipped",
                fields.len()
            ),
        ));
    }
    let name = fields[0].to_string();
    if name.is_empty() || name.contains('/') || name.contains('\\') {
        return Err((
            IssueKind::BadRow,
            format!("expected a plain file name, found `{name}`; row skipped"),
        ));
    }
    let visibility = match fields[1].parse::<u8>() {
        Ok(v) if v <= 3 => v,
        _ => {
            return Err((
                IssueKind::BadRow,
                format!(
                    "expected visibility 0-3, found `{}`; row skipped",
                    fields[1]
                ),
            ));
        }
    };
    let number = |s: &str, what: &str| -> Result<Option<f32>, (IssueKind, String)> {
        if s.is_empty() {
            return Ok(None);
        }
        match s.parse::<f32>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err((
                IssueKind::BadRow,
                format!("expected a number for {what}, found `{s}`; row skipped"),
            )),
        }
    };
    let status = match fields.get(4).copied().unwrap_or("") {
        "" => None,
        s => match s.parse::<f32>() {
            Ok(v) if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 255.0 => Some(v as u8),
            _ => {
                return Err((
                    IssueKind::BadRow,
                    format!("expected an integer status, found `{s}`; row skipped"),
                ));
            }
        },
    };
    if visibility == 0 {
        // Coordinates of invisible balls are meaningless (often 0 or blank); ignore them.
        return Ok(Row {
            name,
            visibility,
            xy: None,
            status,
        });
    }
    let x = number(fields[2], "x-coordinate")?;
    let y = number(fields[3], "y-coordinate")?;
    match (x, y) {
        (Some(x), Some(y)) if x >= 0.0 && y >= 0.0 => Ok(Row {
            name,
            visibility,
            xy: Some((x, y)),
            status,
        }),
        (Some(x), Some(y)) => Err((
            IssueKind::BadRow,
            format!("expected non-negative coordinates, found ({x}, {y}); row skipped"),
        )),
        _ => Err((
            IssueKind::BlankCoordinates,
            format!("visibility {visibility} but x/y blank; row skipped"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_puts_clip2_before_clip10() {
        let mut v = vec!["Clip10", "Clip2", "Clip1"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, vec!["Clip1", "Clip2", "Clip10"]);
    }

    /// One CSV line as the scanner's reader sees it.
    fn parse_line(line: &str) -> Result<Row, (IssueKind, String)> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(line.as_bytes());
        parse_row(&reader.records().next().unwrap().unwrap())
    }

    #[test]
    fn parse_row_accepts_invisible_blank_and_rejects_bad() {
        let r = parse_line("0001.jpg,0,,,").map_err(|e| e.1).unwrap();
        assert_eq!((r.visibility, r.xy, r.status), (0, None, None));
        let r = parse_line("0002.jpg,1,10.5,20,2").map_err(|e| e.1).unwrap();
        assert_eq!(
            (r.visibility, r.xy, r.status),
            (1, Some((10.5, 20.0)), Some(2))
        );
        assert_eq!(
            parse_line("a.jpg,1,,,").err().unwrap().0,
            IssueKind::BlankCoordinates
        );
        assert_eq!(
            parse_line("a.jpg,7,1,1,0").err().unwrap().0,
            IssueKind::BadRow
        );
        assert_eq!(
            parse_line("a.jpg,1,x,1,0").err().unwrap().0,
            IssueKind::BadRow
        );
        assert_eq!(parse_line("a.jpg,1").err().unwrap().0, IssueKind::BadRow);
    }
}
