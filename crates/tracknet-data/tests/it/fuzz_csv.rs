//! Arbitrary Label.csv content never panics; every data row is either kept or reported.
use crate::common;

use common::{TempDir, write_jpeg};
use proptest::prelude::*;
use tracknet_data::DatasetIndex;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn arbitrary_rows_are_kept_or_reported(rows in proptest::collection::vec("[0-9a-z.,\\- ]{0,24}", 0..8)) {
        let dir = TempDir::new("fuzz");
        let clip = dir.path().join("game1/Clip1");
        std::fs::create_dir_all(&clip).unwrap();
        write_jpeg(&clip.join("0.jpg"), 8, 8);
        let mut csv = String::from("file name,visibility,x-coordinate,y-coordinate,status\n");
        for r in &rows {
            csv.push_str(r);
            csv.push('\n');
        }
        std::fs::write(clip.join("Label.csv"), csv).unwrap();
        let (index, report) = DatasetIndex::scan(dir.path(), &["game1".into()], false).unwrap();
        let data_rows = rows.iter().filter(|r| !r.trim().is_empty()).count();
        prop_assert_eq!(report.rows, data_rows);
        prop_assert_eq!(index.len() + report.skipped.len(), data_rows);
        prop_assert!(report.skipped.iter().all(|i| i.line.is_some_and(|l| l >= 2)));
    }
}
