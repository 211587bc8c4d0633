//! Output folders that appear whole or not at all (`predict --out`, `export --out`): the work
//! writes into a hidden sibling folder, which takes the output's name only once complete. A
//! failure or a graceful stop removes it; a kill leaves it under its hidden `.tmp-` name, never
//! as if it were a finished output.

use std::path::{Path, PathBuf};

use crate::error::{TrainError, io_err};
use crate::stop::StopFlag;

/// A folder being written for `out`.
#[derive(Debug)]
pub struct Staged {
    out: PathBuf,
    tmp: PathBuf,
}

impl Staged {
    /// Starts an output at `out`, which must not exist or be an empty folder (nothing is
    /// overwritten).
    pub fn new(out: &Path) -> Result<Self, TrainError> {
        if holds_files(out)? {
            return Err(TrainError::OutputNotEmpty {
                path: out.to_path_buf(),
            });
        }
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Ok(Self {
            out: out.to_path_buf(),
            tmp,
        })
    }

    /// Where to write meanwhile.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// [`TrainError::Interrupted`] when `stop` has been requested.
    pub fn check(&self, stop: Option<&StopFlag>, what: &'static str) -> Result<(), TrainError> {
        match stop.and_then(StopFlag::requested) {
            Some(signal) => Err(TrainError::Interrupted {
                signal,
                what,
                out: self.out.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Ends the work: on success the folder takes the output's name; on an error it is
    /// removed and the error returned.
    pub fn finish<T>(self, result: Result<T, TrainError>) -> Result<T, TrainError> {
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&self.tmp);
                return Err(e);
            }
        };
        if self.out.exists() {
            // Empty (checked in `new`): replaced by the finished output.
            std::fs::remove_dir(&self.out).map_err(io_err(&self.out))?;
        }
        std::fs::rename(&self.tmp, &self.out).map_err(io_err(&self.out))?;
        Ok(value)
    }
}

/// Whether `dir` is in use as an output: a folder with anything in it, or a file of that name
/// (an absent or empty folder is free). A folder that cannot be listed is an error naming it.
pub(crate) fn holds_files(dir: &Path) -> Result<bool, TrainError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(_) if dir.is_file() => Ok(true),
        Err(e) => Err(io_err(dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_appears_whole_or_not_at_all() {
        let root = std::env::temp_dir().join(format!("tracknet-staged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let out = root.join("out");
        // Finished: the folder has the output's name and its files.
        let s = Staged::new(&out).unwrap();
        std::fs::write(s.dir().join("a.txt"), "a").unwrap();
        s.finish(Ok(())).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "a");
        // A folder with files is refused, and left as it was.
        let e = Staged::new(&out).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        // Stopped half-way: nothing at the output's name, no staging folder left.
        let other = root.join("other");
        let s = Staged::new(&other).unwrap();
        std::fs::write(s.dir().join("half.txt"), "h").unwrap();
        let stop = StopFlag::new();
        assert!(s.check(Some(&stop), "predict").is_ok());
        stop.request(crate::stop::SIGTERM);
        let e = s.check(Some(&stop), "predict").unwrap_err();
        let e = s.finish::<()>(Err(e)).unwrap_err().to_string();
        assert!(e.contains("predict stopped by SIGTERM"), "{e}");
        assert!(!other.exists());
        let left: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
        assert_eq!(left.len(), 1, "only the finished output: {left:?}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
